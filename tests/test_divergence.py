"""Differences between speculative and base-only greedy output: first divergent position, the base's
top-2 margin there, and the verdict (near-tie flip under the dtype's tolerance, or a real mismatch),
in the pure classifier and in what the compare mode and the bench report."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from specforge_het.bench.methods import Generation, Method, hf_method, ours_method
from specforge_het.bench.report import print_report as bench_print_report
from specforge_het.bench.suite import PeakMemory, explain_differences, load_prompts, run_suite
from specforge_het.bench.summary import divergences, mismatches, summarise
from specforge_het.config import InferenceConfig
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.divergence import (
    MISMATCH,
    NEAR_TIE,
    REL_TOLERANCE,
    classify_divergence,
    explain_divergence,
    first_difference,
    tolerance,
)
from specforge_het.inference.harness import Record
from specforge_het.inference.report import print_report
from specforge_het.inference.runner import BASE, SPEC
from specforge_het.inference.runner import explain_differences as explain_turns
from specforge_het.inference.runner import summarise as summarise_turns


def _logits(values: dict[int, float], vocab: int = 50, rest: float = 0.0) -> torch.Tensor:
    z = torch.full((vocab,), rest)
    for tok, v in values.items():
        z[tok] = v
    return z


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 4]) == 2 and first_difference([], [7]) == 0


def test_near_tie_flip_in_bfloat16() -> None:
    """The base's best two tokens 0.25 apart at |logit| 20: bfloat16 rounding can swap them (tolerance
    2^-5 x 20 = 0.625), so the speculative output's other choice is a near-tie flip, not a bug."""
    base_out, spec_out = [4, 8, 5, 9], [4, 8, 7, 1]
    z = _logits({5: 20.0, 7: 19.75, 3: 12.0})
    d = classify_divergence(base_out, spec_out, z, torch.bfloat16)
    assert d.position == 2 and (d.base_token, d.other_token) == (5, 7)
    assert d.margin == pytest.approx(0.25) and d.gap == pytest.approx(0.25)
    assert d.tolerance == pytest.approx(20 * 2.0**-5) and d.dtype == "bfloat16"
    assert d.verdict == NEAR_TIE and d.near_tie
    assert "near-tie flip" in d.describe() and "margin 0.25" in d.describe()
    # the same gap in float32 is far above float32 rounding: a real mismatch there
    assert classify_divergence(base_out, spec_out, z, torch.float32).verdict == MISMATCH


def test_real_mismatch_is_reported() -> None:
    """The speculative token sits 8 logits below the base's best (bfloat16 tolerance 0.625): a real mismatch,
    even though the base's own top-2 margin is small."""
    z = _logits({5: 20.0, 6: 19.9, 7: 12.0})
    d = classify_divergence([5, 1], [7, 1], z, "bfloat16")
    assert d.position == 0 and d.verdict == MISMATCH and not d.near_tie
    assert d.margin == pytest.approx(0.1, abs=1e-5) and d.gap == pytest.approx(8.0)
    assert d.to_json()["verdict"] == MISMATCH and d.to_json()["gap"] == pytest.approx(8.0)


def test_length_difference_and_equal_outputs() -> None:
    z = _logits({5: 3.0, 6: 2.9})
    d = classify_divergence([5, 6], [5], z, "bfloat16")
    assert d.position == 1 and d.other_token is None and d.verdict == MISMATCH and d.to_json()["gap"] is None
    assert classify_divergence([1, 2], [1, 2], z, "bfloat16") is None


def test_tolerance_scales_and_validates() -> None:
    assert tolerance("bfloat16", 0.1) == REL_TOLERANCE["bfloat16"]  # floor at |logit| 1
    assert tolerance(torch.float16, -40.0) == pytest.approx(40 * 2.0**-8)
    assert REL_TOLERANCE["float32"] < REL_TOLERANCE["float16"] < REL_TOLERANCE["bfloat16"]
    with pytest.raises(ValueError, match="no near-tie tolerance for dtype int8"):
        tolerance(torch.int8, 1.0)
    with pytest.raises(ValueError, match="\\[V\\] row"):
        classify_divergence([1], [2], torch.zeros(2, 3), "float32")


@pytest.fixture(scope="module")
def prompt(tok_a):
    return tok_a("A draft tree is verified in one forward pass.", return_tensors="pt").input_ids


def test_explain_divergence_reads_the_base_at_the_first_difference(llama_base, prompt) -> None:
    out = Decoder(llama_base).generate(prompt, 8).tokens
    base_logits = llama_base.features(torch.tensor([prompt[0].tolist() + out[:3]]), ()).logits[0, -1]
    worst = int(base_logits.argmin())
    other = out[:3] + [worst] + out[4:]
    d = explain_divergence(llama_base, prompt[0].tolist(), out, other)
    top2 = torch.topk(base_logits, 2).values
    assert d.position == 3 and (d.base_token, d.other_token) == (out[3], worst) and d.dtype == "float32"
    assert d.margin == pytest.approx(float(top2[0] - top2[1]), abs=1e-4)
    assert d.verdict == MISMATCH
    assert explain_divergence(llama_base, prompt[0].tolist(), out, list(out)) is None


def _turn(mode: str, tokens: list[int], prompt_ids: list[int], turn: int = 0) -> Record:
    gen = Generation(tokens, forwards=len(tokens) + 1, accept_lengths=[1] * len(tokens))
    return Record.of(mode, "c1", turn, prompt_ids, gen, 0.1)


def test_compare_mode_reports_dtype_position_margin_and_verdict(llama_base, prompt) -> None:
    ids = prompt[0].tolist()
    out = Decoder(llama_base).generate(prompt, 6).tokens
    wrong = out[:2] + [(out[2] + 1) % llama_base.vocab_size] + out[3:]
    records = [_turn(BASE, out, ids), _turn(SPEC, wrong, ids),
               _turn(BASE, out, ids + [1], 1), _turn(SPEC, wrong, ids + [2], 1),  # turn 1: prompts differ
               _turn(BASE, out, ids, 2), _turn(SPEC, out, ids, 2)]
    explain_turns(llama_base, records)
    assert records[1].divergence.position == 2 and records[3].prompt_differs and records[3].divergence is None
    summary = summarise_turns(records)
    assert (summary["identical"], summary["compared"]) == (1, 3)
    assert records[1].to_json()["divergence"]["position"] == 2
    console = Console(record=True, width=200)
    info = {"device": "cpu", "dtype": "float32", "threads": 1}
    print_report(records, summary, info, {}, "chain", console=console)
    text = console.export_text()
    assert "identical outputs: 1/3 (float32)" in text and "@2" in text and "NO (prompt: earlier turn)" in text
    assert "first difference at new token 2" in text and "base top-2 margin" in text
    verdict = records[1].divergence.verdict
    assert f"-> {verdict}" in text
    want = (1, 0) if verdict == NEAR_TIE else (0, 1)
    assert (summary["near_tie"], summary["mismatch"], summary["prompt_differs"]) == (*want, 1)


def test_compare_mode_all_identical_states_the_dtype() -> None:
    records = [_turn(BASE, [1, 2], [5]), _turn(SPEC, [1, 2], [5])]
    summary = summarise_turns(records)
    console = Console(record=True, width=200)
    print_report(records, summary, {"device": "cpu", "dtype": "bfloat16", "threads": 1}, {}, "chain", console=console)
    text = console.export_text()
    assert "identical outputs: 1/1 (bfloat16)" in text and "differing" not in text


def test_bench_classifies_differences_from_hf_generate(llama_base, tmp_path) -> None:
    """A method that replaces one token with the base's worst one: the bench reports a real mismatch at
    that position, with the dtype, per prompt (JSON record and printed lines)."""
    hf = hf_method("hf", llama_base)

    def worst_at_1(ids: torch.Tensor, n: int) -> Generation:
        tokens = hf.run(ids, n).tokens
        z = llama_base.features(torch.cat([ids, torch.tensor([tokens[:1]])], 1), ()).logits[0, -1]
        return Generation([tokens[0], int(z.argmin()), *tokens[2:]], forwards=len(tokens))

    methods = [hf, ours_method("ours-base", llama_base, None), Method("broken", "broken", worst_at_1)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"turns": ["Write a short poem about the sea.", "Now make it rhyme."]}) + "\n")
    records = run_suite(methods, load_prompts(str(rows)), llama_base, InferenceConfig(max_new_tokens=4, warmup=False),
                        PeakMemory(llama_base.device))
    explain_differences(llama_base, records)
    found = divergences(records, "broken")
    assert [(c, t) for c, t, _ in found] == [("0", 0), ("0", 1)]
    assert all(d.position == 1 and d.verdict == MISMATCH for _, _, d in found)
    assert divergences(records, "ours-base") == []
    summary = summarise(records, ["hf", "ours-base", "broken"])
    assert (summary["broken"]["near_tie"], summary["broken"]["mismatch"]) == (0, 2)
    assert [r.to_json()["divergence"]["verdict"] for r in records if r.method == "broken"] == [MISMATCH] * 2
    console = Console(record=True, width=200)
    bench_print_report({"device": "cpu", "dtype": "float32", "torch_threads": 1, "torch": "t", "transformers": "x",
                        "base": "b", "draft": "none", "command": "c", "peak_memory": "m"}, summary,
                       {"hf": "HF generate", "broken": "broken"}, {}, {"broken": mismatches(records, "broken")}, 2, 4,
                       console, divergent={"broken": found})
    text = " ".join(console.export_text().split())
    assert "outputs compared in float32" in text
    assert "In float32: 0 near-tie flip(s), 2 real mismatch(es)" in text and "0 turn 1: first difference at new token 1" in text


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compare_cli_states_the_dtype_and_classifies_every_difference(base_dirs, tmp_path, capsys, dtype) -> None:
    """`--inference.compare` end to end: the identical line and the JSON summary name the dtype; in float32 the
    outputs are identical, in bfloat16 every differing turn carries a verdict (none left unclassified)."""
    from specforge_het.cli import run_cli
    from specforge_het.inference.__main__ import main

    outfile = tmp_path / "out.jsonl"
    run_cli(main, "specforge_het.inference", argv=[
        "--modeling.base_model", base_dirs["llama"], "--modeling.dtype", dtype, "--inference.compare",
        "--inference.tree", "dynamic", "--inference.max_depth", "3", "--inference.top_k", "3",
        "--inference.total_tokens", "8", "--inference.fast_paths", "off", "--inference.warmup", "false",
        "--inference.max_new_tokens", "16", "--prompt", "Write a short poem about the sea.", "--outfile", str(outfile)])
    out = " ".join(capsys.readouterr().out.split())
    line = json.loads(outfile.read_text().splitlines()[0])
    s = line["summary"]
    assert s["dtype"] == dtype and f"identical outputs: {s['identical']}/{s['compared']} ({dtype})" in out
    if dtype == "float32":
        assert s["identical"] == s["compared"] == 1 and (s["near_tie"], s["mismatch"]) == (0, 0)
    spec = [t for t in line["turns"] if t["mode"] == SPEC]
    for t in spec:
        d = t["divergence"]
        assert d is None or (d["verdict"] in (NEAR_TIE, MISMATCH) and d["dtype"] == dtype and d["margin"] >= 0)
    assert s["compared"] - s["identical"] == s["near_tie"] + s["mismatch"] + s["prompt_differs"]
