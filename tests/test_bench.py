"""`python -m specforge_het.bench`: every method on tiny models, the JSON/PNG outputs, the identical-output
check, the pure speed-up functions, and a CI smoke run on the embedded SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import draft_modeling, real_model_threads
from rich.console import Console

import specforge_het.assets as assets
import specforge_het.bench.methods as bench_methods
from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import save_draft
from specforge_het.bench.__main__ import cli
from specforge_het.bench.integrity import plain_violations
from specforge_het.bench.loading import find_shipped_draft
from specforge_het.bench.methods import (
    DIAGNOSTIC,
    METHODS,
    Generation,
    Method,
    hf_method,
    load_assistant,
    ours_method,
    parse_methods,
)
from specforge_het.bench.report import print_report
from specforge_het.bench.suite import PeakMemory, load_prompts, run_suite
from specforge_het.bench.summary import mismatches, summarise
from specforge_het.config import InferenceConfig
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.harness import Record, measure
from specforge_het.models.linears import is_packed, packed_linears
from specforge_het.testing import save_tiny_base

ROWS = [
    {"question_id": 1, "turns": ["Write a short poem about the sea.", "Now make it rhyme."]},
    {"question_id": 2, "turns": ["What is the capital of France?"]},
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory, llama_base, tok_b):
    root = tmp_path_factory.mktemp("bench")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    draft = save_draft(build_draft(draft_modeling(), llama_base), root / "draft")
    other = save_tiny_base(root / "other_tok", "llama", tok_b, seed=1)  # another tokenizer, for universal assisted
    return {"root": root, "prompts": prompts, "draft": draft, "other": other}


@pytest.fixture(scope="module")
def bench_run(bench_files, base_dirs):
    """One in-process run of the CLI with every method; the tiny base is its own same-tokenizer assistant.

    Spies (test-only, class-level): every step of every HF generate checks that the models it runs on
    are plain HF; every decode step of ours records how many base linears are packed at that moment."""
    out = bench_files["root"] / "out" / "bench.json"
    audit = {"steps": 0, "violations": [], "packed_in_ours": []}
    with pytest.MonkeyPatch.context() as mp:  # the auto tree's cost-model cache goes to tmp, not ~/.cache
        mp.setenv("SPECFORGE_HET_CACHE", str(bench_files["root"] / "cache"))
        _spy_on_hf_and_ours(mp, audit)
        _run_all_methods(bench_files, base_dirs, out)
    return json.loads(out.read_text()), out, audit


def _spy_on_hf_and_ours(mp, audit: dict) -> None:
    from transformers import GenerationMixin

    running: list = []  # models inside generate() right now (the base, and an assistant drafting for it)
    generate = GenerationMixin.generate

    def tracked_generate(self, *args, **kwargs):
        running.append(self)
        try:
            return generate(self, *args, **kwargs)
        finally:
            running.pop()

    class AuditingCount(bench_methods.CountForwards):
        def __call__(self, input_ids, scores, **kwargs):
            audit["steps"] += 1
            audit["violations"] += plain_violations(*running)
            return super().__call__(input_ids, scores, **kwargs)

    decode = Decoder._generate

    def tracked_decode(self, *args):
        audit["packed_in_ours"].append(sum(is_packed(m) for m in self.base.model.modules()))
        return decode(self, *args)

    mp.setattr(GenerationMixin, "generate", tracked_generate)
    mp.setattr(bench_methods, "CountForwards", AuditingCount)
    mp.setattr(Decoder, "_generate", tracked_decode)


def _auto_tree_built() -> bool:
    try:
        import specforge_het.inference.auto_tree  # noqa: F401
    except ImportError:
        return False
    return True


def _run_all_methods(bench_files, base_dirs, out: Path) -> None:
    cli(["--modeling.base_model", base_dirs["llama"], "--modeling.draft_path", str(bench_files["draft"]),
         "--prompts", str(bench_files["prompts"]), "--assistant", base_dirs["llama"],
         "--universal_assistant", bench_files["other"], "--inference.max_new_tokens", "6", "--outfile", str(out)])


def test_every_method_runs_and_matches_hf_generate(bench_run):
    data, _, _ = bench_run
    ran = set(data["summary"])
    assert set(data["skipped"]) == (set() if _auto_tree_built() else {"ours-auto", "ours-auto-lookup"})
    if _auto_tree_built():
        chosen = data["config"]["method_info"]["ours-auto"]["tree_auto"]["chosen"]
        assert data["methods"]["ours-auto"].startswith(f"ours auto: {chosen['tree'].replace('dynamic', 'tree')}")
    assert ran | set(data["skipped"]) == set(METHODS) - set(DIAGNOSTIC)
    assert data["methods"]["ours-tree-lookup"] == data["methods"]["ours-tree"] + " + lookup 10"  # same tree, + branch
    records = data["records"]
    assert len(records) == 3 * len(ran)  # 2 conversations, 3 turns, every method on each
    for name in ran - {"hf"}:
        assert data["summary"][name]["identical"] == data["summary"][name]["compared"] == 3, name
    by_key: dict = {}
    for r in records:  # every method saw the same prompt ids (same length per turn)
        by_key.setdefault((r["conversation"], r["turn"]), set()).add(r["prompt_tokens"])
    assert all(len(v) == 1 for v in by_key.values())
    first, second = by_key[("1", 0)].pop(), by_key[("1", 1)].pop()
    assert second > first  # turn 2 carries turn 1 and the baseline's answer


def test_hf_peers_run_on_the_plain_hf_model(bench_run):
    """During every step of every HF peer's timed run (the warm-up too), the base and the assistant have
    no instance-level forward and no hooks, although ours ran in between on the same base with its
    linears packed."""
    data, _, audit = bench_run
    assert audit["steps"] > 0 and audit["violations"] == []
    assert audit["packed_in_ours"] and max(audit["packed_in_ours"]) > 0
    assert data["header"]["fast_paths"]["ours"]["mode"] == "auto" and "plain" in data["header"]["fast_paths"]["hf"]


def test_an_hf_peer_on_a_modified_model_is_refused(llama_base):
    hf = hf_method("hf", llama_base)
    ids = torch.tensor([[5, 6, 7, 8]])
    memory = PeakMemory(llama_base.device)
    assert measure(hf, ids, 2, llama_base.device, memory).new_tokens == 2
    handle = llama_base.layers[0].register_forward_hook(lambda *a: None)
    try:
        with pytest.raises(RuntimeError, match="layers.0: 1 forward hooks"):
            measure(hf, ids, 2, llama_base.device, memory)
    finally:
        handle.remove()
    with packed_linears(llama_base.model), pytest.raises(RuntimeError, match="instance-level forward"):
        measure(hf, ids, 2, llama_base.device, memory)
    assert plain_violations(llama_base.model) == []


def test_count_forwards_equals_a_forward_hook(llama_base, base_dirs):
    """The stopping-criterion count of HF's base forwards equals a hook's, for greedy, lookup and assisted."""
    assistant, _ = load_assistant(base_dirs["llama"], llama_base)
    methods = [hf_method("hf", llama_base), hf_method("hf-pld", llama_base, {"prompt_lookup_num_tokens": 3}),
               hf_method("hf-assisted", llama_base, assistant_model=assistant)]
    calls = [0]
    handle = llama_base.model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        for m in methods:
            calls[0] = 0
            gen = m.run(torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7]]), 12)
            assert gen.forwards == calls[0] > 0, m.name
    finally:
        handle.remove()
    assert calls[0] < 12  # assisted: several tokens per base forward


def test_forward_counts_and_tau(bench_run):
    data, _, _ = bench_run
    s, recs = data["summary"], data["records"]
    for r in recs:
        if r["method"] in ("hf", "ours-base"):  # base-only: one base forward per new token
            assert r["forwards"] == r["new_tokens"] and r["tau"] == 1.0
        if r["method"] == "ours-chain":  # prefill + one forward per verify step
            assert r["forwards"] == r["steps"] + 1
    assert s["hf"]["tau"] == 1.0 and s["hf"]["speedup_median"] == 1.0 and s["hf"]["speedup_overall"] == 1.0
    # the base as its own assistant proposes exactly the base's tokens: several accepted per forward
    assert s["hf-assisted"]["tau"] > 1.5
    assert s["hf-assisted"]["base_forwards"] < s["hf"]["base_forwards"]
    assert all(v["peak_mb"] is not None and v["peak_mb"] > 0 for v in s.values())


def test_ours_standalone_uses_the_uag_assistant_and_records_tau(bench_run):
    """ours-standalone: our decoder with hf-uag's (foreign-tokenizer) assistant as a standalone draft LM;
    greedy output identical to HF generate, τ recorded per turn."""
    data, _, _ = bench_run
    s = data["summary"]["ours-standalone"]
    assert s["identical"] == s["compared"] == 3 and s["tau"] >= 1.0
    assert data["methods"]["ours-standalone"].startswith("ours standalone tree d")
    recs = [r for r in data["records"] if r["method"] == "ours-standalone"]
    assert len(recs) == 3 and all(r["forwards"] == r["steps"] + 1 and r["tau"] >= 1.0 for r in recs)


def test_json_schema_and_plot(bench_run):
    data, out, _ = bench_run
    assert set(data) == {"header", "methods", "skipped", "summary", "records", "config", "kernels"}
    assert data["kernels"] and set(data["kernels"].values()) <= {"linear", "mkl", "onednn", "swapped"}  # ours ran on them
    assert set(data["header"]) >= {"device", "dtype", "torch_threads", "torch", "transformers", "base", "draft", "command",
                                  "fast_paths"}
    assert data["header"]["command"].startswith("python -m specforge_het.bench --modeling.base_model")
    # the evaluation harness's JSON shape (inference/harness.py): Record.to_json and the summary rows
    record_keys = {"method", "conversation", "turn", "prompt_tokens", "new_tokens", "seconds", "tokens_per_s", "tau",
                   "forwards", "committed", "steps", "accept_length_histogram", "peak_mb", "token_ids", "text",
                   "identical", "divergence", "prompt_differs"}
    assert all(set(r) == record_keys for r in data["records"])
    assert set(Record("m", "c", 0, 1, 1, 1.0, 1, 1).to_json()) == record_keys
    summary_keys = {"prompts", "new_tokens", "seconds", "tokens_per_s", "tokens_per_s_median", "speedup_median",
                    "speedup_overall", "tau", "accept_length_histogram", "base_forwards", "identical", "compared",
                    "near_tie", "mismatch", "prompt_differs", "peak_mb"}
    assert all(set(v) == summary_keys for v in data["summary"].values())
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.size[0] > 400 and im.size[1] > 100


def test_table_printed(bench_run, capsys, bench_files, base_dirs):
    out = bench_files["root"] / "small.json"
    cli(["--modeling.base_model", base_dirs["llama"], "--prompts", f"{bench_files['prompts']}:1",
         "--methods", "hf,hf-pld,hf-packed", "--inference.fast_paths", "off", "--inference.max_new_tokens", "3",
         "--outfile", str(out)])
    text = capsys.readouterr().out
    assert "HF prompt lookup" in text and "identical" in text and "1.00x" in text
    assert "torch threads" in text and "transformers" in text and "fast paths: ours off (plain modules" in text
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"hf", "hf-pld", "hf-packed"} and data["summary"]["hf-packed"]["identical"] == 2
    assert data["config"]["inference"]["fast_paths"] == "off" and data["header"]["fast_paths"]["ours"]["mode"] == "off"


# ---------------------------------------------------------------- the identical-output check


def test_identical_check_flags_a_different_output(llama_base):
    hf = hf_method("hf", llama_base)

    def off_by_one(ids: torch.Tensor, n: int) -> Generation:
        tokens = hf.run(ids, n).tokens
        return Generation([(tokens[0] + 1) % llama_base.vocab_size, *tokens[1:]], forwards=len(tokens))

    methods = [hf, ours_method("ours-base", llama_base, None), Method("broken", "broken", off_by_one)]
    records = run_suite(methods, load_prompts(f"{_write_rows(ROWS)}:1"), llama_base,
                        InferenceConfig(max_new_tokens=4, warmup=False), PeakMemory(llama_base.device))
    summary = summarise(records, ["hf", "ours-base", "broken"])
    assert summary["ours-base"]["identical"] == 2 and summary["broken"]["identical"] == 0
    assert mismatches(records, "broken") == [("1", 0), ("1", 1)] and mismatches(records, "ours-base") == []
    console = Console(record=True, width=120)
    print_report({"device": "cpu", "dtype": "float32", "torch_threads": 1, "torch": "t", "transformers": "x",
                  "base": "b", "draft": "none", "command": "c", "peak_memory": "m"}, summary,
                 {"hf": "HF generate", "broken": "broken"}, {}, {"broken": mismatches(records, "broken")}, 2, 4, console)
    text = console.export_text()
    assert "broken: output differs from HF generate on 2 prompt(s)" in text and "0/2" in text


def _write_rows(rows) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- pure functions


def test_parse_methods():
    assert parse_methods(None) == [m for m in METHODS if m not in DIAGNOSTIC] and "hf-packed" in METHODS
    assert parse_methods("hf-packed") == ["hf", "hf-packed"]  # a diagnostic runs only when named
    assert parse_methods("ours-tree,hf-pld") == ["hf", "hf-pld", "ours-tree"]  # table order, baseline kept
    assert parse_methods(("ours-base",)) == ["hf", "ours-base"]
    with pytest.raises(ValueError, match="unknown method.*'hf-foo'.*choose from"):
        parse_methods("hf-foo")


def test_load_prompts(tmp_path):
    conv = load_prompts("mtbench:2")
    assert len(conv) == 2 and all(len(c.turns) == 2 for c in conv)
    gsm = tmp_path / "gsm8k_test.jsonl"
    gsm.write_text(json.dumps({"question": "2 + 2?", "answer": "#### 4"}) + "\n" + json.dumps({"question": "3?"}) + "\n")
    assert [c.turns for c in load_prompts(f"gsm8k:{gsm}:1")] == [["2 + 2?"]]
    assert len(load_prompts(f"gsm8k:{gsm}")) == 2 and len(load_prompts(str(gsm))) == 2
    with pytest.raises(FileNotFoundError, match="mtbench"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="gsm8k needs"):
        load_prompts("gsm8k:")


def test_peak_memory_sees_an_allocation():
    mem = PeakMemory(torch.device("cpu"))
    if mem.kind == "unavailable":
        pytest.skip(mem.note)
    mem.reset()
    before = mem.read_mb()
    big = torch.ones(40_000_000)  # 160 MB, touched
    after = mem.read_mb()
    del big
    assert after - before > 120


# ---------------------------------------------------------------- draft and assistant resolution


def test_shipped_draft_found_by_base_shape_and_algorithm(tmp_path, monkeypatch, llama_base):
    monkeypatch.setattr(assets, "SHIPPED_DRAFTS", tmp_path)
    assert find_shipped_draft(llama_base.describe(), "eagle_v3", "reduced") is None
    save_draft(build_draft(draft_modeling(), llama_base), tmp_path / "tiny-eagle3")
    desc = {**llama_base.describe(), "name": "renamed"}
    assert find_shipped_draft(desc, "eagle_v3", "reduced") == "tiny-eagle3"
    assert find_shipped_draft(desc, "eagle_v2", "base") is None
    assert find_shipped_draft({**desc, "hidden_size": 99}, "eagle_v3", "reduced") is None


def test_missing_draft_and_wrong_assistant_fail_clearly(tmp_path, monkeypatch, base_dirs, bench_files, capsys):
    monkeypatch.setattr(assets, "SHIPPED_DRAFTS", tmp_path)
    with pytest.raises(SystemExit) as e:  # loading raises ConfigError; the command line turns it into exit status 2
        cli(["--modeling.base_model", base_dirs["llama"], "--prompts", "mtbench:1", "--methods", "ours-tree"])
    assert e.value.code == 2 and "--modeling.draft_path" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["--modeling.base_model", base_dirs["llama"], "--prompts", "mtbench:1", "--methods", "hf-assisted",
             "--assistant", bench_files["other"]])
    assert e.value.code == 2 and "--universal_assistant" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown method"):
        cli(["--modeling.base_model", base_dirs["llama"], "--methods", "hf,nope"])


# ---------------------------------------------------------------- CI smoke run on the embedded SmolLM2


@pytest.mark.slow
def test_bench_cli_on_embedded_smollm2(tmp_path):
    """The CLI end to end on the real SmolLM2 (mtbench:1, 8 tokens); no speed is asserted."""
    from specforge_het.config import resolve
    from specforge_het.models.base import BaseModel

    cfg, _, _ = resolve(["--@smollm2", "--@eagle_v3"])
    args = ["--@smollm2", "--@eagle_v3", "--@tree_cpu", "--prompts", "mtbench:1", "--inference.max_new_tokens", "8",
            "--outfile", str(tmp_path / "smollm2.json"),  # all but ours-auto, whose calibration is tested on its own
            "--methods", "hf,ours-base,hf-pld,hf-assisted,hf-uag,ours-chain,ours-tree,ours-lookup"]
    base = BaseModel.load(cfg.modeling.base_model)
    if find_shipped_draft(base.describe(), "eagle_v3", "reduced") is None:
        args += ["--modeling.draft_path", str(save_draft(build_draft(cfg.modeling, base), tmp_path / "draft"))]
    env = {**os.environ, "OMP_NUM_THREADS": str(real_model_threads()), "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "specforge_het.bench", *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "smollm2.json").read_text())
    assert set(data["summary"]) >= {"hf", "ours-base", "hf-pld", "ours-chain", "ours-tree", "ours-lookup"}
    assert {"hf-assisted", "hf-uag"} <= set(data["skipped"])
    for name, s in data["summary"].items():
        if name != "hf":
            assert s["identical"] == s["compared"] == 2, name
    assert "ours base-only" in proc.stdout and "skipped HF assisted" in proc.stdout
    assert (tmp_path / "smollm2.png").read_bytes()[:8] == PNG_MAGIC
