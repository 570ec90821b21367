"""`python -m specforge_het.bench.linears`: plain vs packed linears, and the modules left plain after."""

from __future__ import annotations

import json

import torch
from torch import nn

from specforge_het.bench import linears as bench_linears
from specforge_het.models import linears as fast


def test_measure_reports_rows_and_leaves_modules_plain() -> None:
    torch.manual_seed(0)
    mods = [nn.Linear(64, 128), nn.Linear(128, 64)]
    got = bench_linears.measure(mods, (1, 4, 9), reps=2)
    assert [r["rows"] for r in got] == [1, 4, 9]
    for r in got:
        assert r["plain_ms"] > 0 and r["packed_ms"] > 0
        assert r["speedup"] > 0 and r["packed_vs_1row"] > 0
    assert not any(fast.is_packed(m) for m in mods)  # the bench restores plain modules
    chosen = fast.kernel_choices()
    assert {"128x64+bias rows<=4", "128x64+bias rows<=16", "64x128+bias rows<=16"} <= set(chosen)  # 4 and 9 rows


def test_main_writes_json(tmp_path, monkeypatch) -> None:
    calls = []

    class Tiny:
        layers = nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 48)])
        lm_head = nn.Linear(32, 80, bias=False)

        @staticmethod
        def load(name):
            calls.append(name)
            return Tiny()

        def train(self, mode):
            return self

    monkeypatch.setattr("specforge_het.models.base.BaseModel", Tiny)
    out = tmp_path / "lin.json"
    bench_linears.main(model="tiny", rows="1,4", reps=1, outfile=str(out))
    data = json.loads(out.read_text())
    assert calls == ["tiny"] and [r["rows"] for r in data["results"]] == [1, 4]
    assert [r["rows"] for r in data["lm_head"]] == [1, 4] and "80x32 rows<=4" in data["kernels"]
    bench_linears.main(model="tiny", rows=(1, 4, 16), reps=1, outfile=str(out))  # fire's form of --rows 1,4,16
    assert [r["rows"] for r in json.loads(out.read_text())["results"]] == [1, 4, 16]
    assert data["command"].startswith("python -m specforge_het.bench.linears")
