"""eagle_v2 bridge: the runner's pure parts, the JSON protocol with the reference worker, and (only when
the external reference environment exists) an end-to-end comparison against eagle-llm on a tiny base.

The reference environment (a separate venv with eagle-llm 1.2.1 + transformers 4.36) is external to
this project's venv; its integration test is skipped with the reason when it is absent. Everything
else runs here on CPU with tiny models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _base_folder

from eagle_v2 import reference_worker
from eagle_v2.compare import PathsProposer, our_generation
from eagle_v2.parts import compare_logits, compare_static_tree, compare_weights, truncate_output
from eagle_v2.protocol import MARKER, WORKER, ReferenceUnavailable, Request, check_ref_python, parse_response
from eagle_v2.report import merge_runs, notes_lines, parts_table, run_record, runs_table, summarise
from specforge_het.algorithms.build import build_draft
from specforge_het.config import ModelingConfig
from specforge_het.inference.decoder import Decoder, eos_ids
from specforge_het.inference.prompts import Conversation
from specforge_het.inference.tree import static_parents

REF_PYTHON = os.environ.get("EAGLE_REF_PYTHON", "/work/venv_eagle/bin/python")


# ------------------------------------------------------------------ protocol
def test_request_json_carries_everything_and_rejects_bad_input(tmp_path):
    req = Request("base", "draft", str(tmp_path), prompts=[[1, 2, 3]], max_new_tokens=5, tasks=("env", "tree"))
    body = json.loads(req.to_json())
    assert body["protocol"] == 1 and body["tasks"] == ["env", "tree"] and body["prompts"] == [[1, 2, 3]]
    assert body["max_new_tokens"] == 5 and body["rope_theta_shim"] is False
    with pytest.raises(ValueError, match="unknown reference tasks"):
        Request("b", "d", "w", tasks=("env", "nope")).to_json()
    with pytest.raises(ValueError, match="non-empty list of int"):
        Request("b", "d", "w", prompts=[[]]).to_json()
    with pytest.raises(ValueError, match="max_new_tokens"):
        Request("b", "d", "w", max_new_tokens=0).to_json()


def test_parse_response_takes_the_marker_line_only():
    noise = "some warning printed by the reference\n"
    resp = parse_response(noise + MARKER + json.dumps({"protocol": 1, "ok": True}) + "\ntrailing\n")
    assert resp["ok"] is True and resp["errors"] == {} and resp["results"] == {}
    with pytest.raises(ReferenceUnavailable, match="no response line"):
        parse_response(noise)
    with pytest.raises(ReferenceUnavailable, match="protocol 7"):
        parse_response(MARKER + json.dumps({"protocol": 7}))
    with pytest.raises(ReferenceUnavailable, match="not JSON"):
        parse_response(MARKER + "{oops")


def test_missing_reference_python_names_the_setup_script(tmp_path):
    with pytest.raises(ReferenceUnavailable, match="setup_reference_env.sh"):
        check_ref_python(str(tmp_path / "no_venv" / "bin" / "python"))


def _worker(request: dict | str) -> tuple[int, str]:
    text = request if isinstance(request, str) else json.dumps(request)
    proc = subprocess.run([sys.executable, str(WORKER)], input=text, capture_output=True, text=True, timeout=120,
                          check=False)
    return proc.returncode, proc.stdout


def test_worker_speaks_the_protocol_even_without_eagle(tmp_path):
    """Our venv has no eagle-llm: the worker still answers, naming the failure, over the same JSON channel."""
    rc, out = _worker({"protocol": 1, "work_dir": str(tmp_path), "tasks": ["env", "bogus"]})
    resp = parse_response(out)
    assert rc == 0 and out.count(MARKER) == 1
    assert "eagle" in resp["errors"]["env"] and "bogus" in resp["errors"]["request"]
    rc, out = _worker({"protocol": 99})
    assert parse_response(out)["ok"] is False and "protocol" in parse_response(out)["errors"]["request"]
    rc, out = _worker("not json")
    assert rc == 2 and "request" in parse_response(out)["errors"]


def test_compat_base_folder_translates_transformers5_files(tmp_path, model_dir, tok_a):
    src = Path(_base_folder(model_dir, "llama", tok_a))
    notes = reference_worker.compat_base_folder(src, tmp_path / "compat")
    cfg = json.loads((tmp_path / "compat" / "config.json").read_text())
    assert "rope_parameters" not in cfg and cfg["rope_theta"] == 10000.0
    tok = json.loads((tmp_path / "compat" / "tokenizer.json").read_text())
    assert all(isinstance(m, str) and len(m.split(" ")) == 2 for m in tok["model"]["merges"])
    assert (tmp_path / "compat" / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    assert any("rope_theta" in n for n in notes) and any("merges" in n for n in notes)


# ------------------------------------------------------------------ parts
def _state():
    g = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(4, 8, generator=g), "layers.0.mlp.up_proj.weight": torch.randn(6, 4, generator=g),
            "norm.weight": torch.ones(4)}


def test_weights_comparison_catches_a_perturbed_tensor():
    ours = _state()
    key_map = {"fc.weight": "fc.weight", "layers.0.mlp.up_proj.weight": "layers.0.mlp.up_proj.weight"}
    ref = {k: ours[v].clone() for k, v in key_map.items()}
    same = compare_weights(ours, ref, key_map, unused=("norm.weight",))
    assert same["equal"] and same["mismatched"] == [] and same["ours_unmapped"] == ["norm.weight"]
    ref["layers.0.mlp.up_proj.weight"][2, 3] += 1e-3
    bad = compare_weights(ours, ref, key_map, unused=("norm.weight",))
    assert not bad["equal"] and bad["mismatched"] == ["layers.0.mlp.up_proj.weight"]
    assert bad["tensors"]["layers.0.mlp.up_proj.weight"]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert not compare_weights(ours, ref, key_map)["equal"]  # norm.weight not declared unused
    ref.pop("fc.weight")
    assert "fc.weight" in compare_weights(ours, ref, key_map, unused=("norm.weight",))["mismatched"]


def test_logits_comparison_reports_top1_and_overlap():
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    same = compare_logits(a, a.clone(), k=2)
    assert same["match"] and same["top1_agreement"] == 1.0 and same["top2_overlap"] == 1.0
    b = a.clone()
    b[1] = torch.tensor([0.0, 2.0, 1.0, 3.0])  # row 1: top-1 3 instead of 0, top-2 {3, 1} vs {0, 1}
    diff = compare_logits(a, b, k=2)
    assert not diff["match"] and diff["top1_agreement"] == 0.5 and diff["top2_overlap"] == 0.75
    assert diff["max_abs_diff"] == 3.0


def test_static_tree_comparison_against_literal_reference_buffers():
    parents, _ = static_parents([[0], [1], [0, 0]])  # root, (0), (1), (0,0)
    tokens = torch.tensor([7, 11, 12, 13])
    ref = {"tokens": tokens.clone(), "position_ids": torch.tensor([0, 1, 1, 2]),
           "attn_mask": torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.float32),
           "retrieve_indices": torch.tensor([[0, 1, 3], [0, 2, -1]])}
    res = compare_static_tree(tokens, parents, ref)
    assert res["match"] and res["tokens_equal"] == 4 and res["first_token_mismatch"] is None
    ref["tokens"] = torch.tensor([7, 11, 99, 13])
    res = compare_static_tree(tokens, parents, ref)
    assert not res["match"] and res["first_token_mismatch"] == 2 and res["mask_equal"]
    ref["attn_mask"][3, 1] = 0
    assert not compare_static_tree(tokens, parents, ref)["mask_equal"]


def test_truncate_output_cuts_at_limit_then_eos():
    assert truncate_output([5, 2, 9], {2}, 10) == [5, 2]
    assert truncate_output([5, 6, 2], {2}, 2) == [5, 6]
    assert truncate_output([], {2}, 3) == []


# ------------------------------------------------------------------ merging and tables
def _fake_runs():
    ours = [run_record("ours", "base-only", 0, [4, 5, 6, 2], [1, 1, 1], 2.0),
            run_record("ours", "speculative", 0, [4, 5, 6, 2, 8], [3, 1], 1.0)]
    resp = {"results": {"generate": {"runs": [
        {"prompt": 0, "mode": "speculative", "tokens": [4, 5, 7], "accept_lengths": [2, 1], "seconds": 0.5},
        {"prompt": 0, "mode": "base-only", "tokens": [4, 5, 7], "accept_lengths": [1, 1, 1], "seconds": 1.5}]}}}
    return merge_runs(ours, resp)


def test_summary_merges_both_sides_and_counts_identical_outputs():
    s = summarise(_fake_runs(), eos={2}, max_new_tokens=8)
    assert s["ours speculative"]["tau"] == 2.0 and s["ours base-only"]["tau"] == 1.0
    assert s["ours speculative"]["new_tokens"] == 4  # cut after EOS
    assert s["ours speculative"]["tokens_per_s"] == 4.0 and s["reference speculative"]["tokens_per_s"] == 6.0
    assert s["ours speculative"]["identical_to"]["ours base-only"] == [1, 1]
    assert s["ours speculative"]["identical_to"]["reference speculative"] == [0, 1]
    assert s["reference base-only"]["identical_to"]["reference speculative"] == [1, 1]
    with pytest.raises(ValueError, match="unknown run"):
        run_record("theirs", "base-only", 0, [], [], 0.0)


def test_tables_render_numbers_and_verdicts():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(runs_table(summarise(_fake_runs(), {2}, 8), "reference"))
    parts = {"weights": compare_weights({"a": torch.ones(2)}, {"a": torch.zeros(2)}, {"a": "a"}),
             "static tree": {"error": "the reference did not run this task"}}
    console.print(parts_table(parts))
    text = console.export_text()
    assert "ours speculative" in text and "2.000" in text and "1/1" in text and "0/1" in text
    assert "differs" in text and "mismatched: a" in text and "not run" in text


def test_notes_explain_rope_theta_and_missing_dynamic_tree():
    resp = {"env": {"eagle_llm": "1.2.1", "cuda_call_sites": ["eagle/model/utils.py:26: torch.cuda.synchronize()"],
                    "has_dynamic_tree": False},
            "load": {"base_rotary_bases": [10000.0], "translations": []}, "errors": {"tree": "boom"}}
    text = "\n".join(notes_lines(resp, 100000.0))
    assert "utils.py:26" in text and "no EAGLE-2 dynamic tree" in text and "ignores rope_theta" in text
    assert "'tree' failed: boom" in text
    assert "ignores rope_theta" not in "\n".join(notes_lines(resp, 10000.0))


# ------------------------------------------------------------------ our side of the comparison
def test_paths_proposer_is_lossless_on_the_reference_tree(llama_base):
    m = ModelingConfig(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False)
    draft = build_draft(m, llama_base, seed=0).train(False)
    paths = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
    prop = PathsProposer(draft, paths)
    assert prop.depth() == 3
    ids = torch.tensor([[3, 17, 40, 5, 9]])
    spec, base = Decoder(llama_base, prop).generate(ids, 12), Decoder(llama_base).generate(ids, 12)
    assert spec.tokens == base.tokens and len(spec.tokens) == 12
    tokens, parents = prop.propose()
    assert tokens.shape[0] == len(paths) + 1 and parents.tolist() == [-1, 0, 0, 0, 1, 1, 2, 4]


def test_our_generation_runs_through_the_harness(llama_base):
    """Our side of the comparison: first turns only, base-only and speculative per prompt, as run records
    whose summary comes from the evaluation harness."""
    m = ModelingConfig(algorithm="eagle_v2", vocab="base", draft_first_input_norm=False)
    draft = build_draft(m, llama_base, seed=0).train(False)
    convs = [Conversation("q7", ["Write a short poem about the sea.", "not asked"]), Conversation("q9", ["Hi."])]
    runs = our_generation(llama_base, draft, [[0], [1], [0, 0]], convs, 6, warmup=True)
    assert [(r["side"], r["mode"], r["prompt"]) for r in runs] == [
        ("ours", "base-only", 0), ("ours", "speculative", 0), ("ours", "base-only", 1), ("ours", "speculative", 1)]
    assert all(r["seconds"] > 0 and 1 <= len(r["tokens"]) <= 6 for r in runs)
    s = summarise(runs, eos_ids(llama_base), 6)
    assert s["ours speculative"]["identical_to"] == {"ours base-only": [2, 2]} and s["ours base-only"]["tau"] == 1.0


# ------------------------------------------------------------------ integration with the real reference
@pytest.mark.skipif(not Path(REF_PYTHON).is_file(), reason=f"external reference env not found at {REF_PYTHON} "
                    "(create it with `bash eagle_v2/setup_reference_env.sh`; set EAGLE_REF_PYTHON to move it)")
def test_end_to_end_against_eagle_llm_on_a_tiny_llama(tmp_path, model_dir, tok_a):
    """Tiny Llama with rope_theta 10000: everything must agree, outputs identical on every row."""
    from eagle_v2.compare import main

    base = _base_folder(model_dir, "llama", tok_a)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ("What is the capital of France?",
                                                                     "Write a short poem about the sea.")))
    main(base=base, draft="untrained", prompts=str(prompts), max_new_tokens=12, ref_python=REF_PYTHON,
         out=str(tmp_path / "run"), warmup=False, timeout_s=600)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    parts = report["parts"]
    assert parts["weights"]["equal"], parts["weights"]["mismatched"]
    assert parts["base features (final normed hidden)"]["match"]
    assert parts["draft logits on our features"]["match"] and parts["static tree"]["match"]
    s = report["summary"]
    assert set(s) == {"ours base-only", "ours speculative", "reference base-only", "reference speculative"}
    for row in s.values():
        assert all(same == n == 2 for same, n in row["identical_to"].values()), row
