"""The `standalone` algorithm end to end: registered (its own config section, no draft folder) and
`python -m specforge_het.inference` with a foreign-tokenizer draft LM (a local folder) giving the
base-only output, in compare mode."""

from __future__ import annotations

import json

import pytest
from conftest import draft_modeling

from specforge_het.algorithms import get_algorithm
from specforge_het.algorithms.build import build_draft
from specforge_het.cli import run_cli
from specforge_het.config import ConfigError
from specforge_het.inference.__main__ import main
from specforge_het.inference.proposer import TreeSpec
from specforge_het.inference.runner import BASE, SPEC
from specforge_het.testing import CORPUS_B, make_tokenizer, save_tiny_base

ROWS = [{"question_id": 1, "turns": ["Write a short poem about the sea.", "Now make it rhyme."]},
        {"question_id": 2, "turns": ["What is the capital of France?"]}]


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    """A tiny Gemma-3 LM with its own tokenizer (another corpus, 400 tokens): a foreign draft."""
    path = tmp_path_factory.mktemp("standalone") / "draft_lm"
    return save_tiny_base(path, "gemma3", make_tokenizer(CORPUS_B, 400), hidden=32, layers=2, seed=3)


def test_registered_with_its_section_and_no_draft_folder(llama_base):
    """Registered with its section; no draft folder is built for it (train distils into the LM itself:
    tests/test_standalone_train.py), and what train saves loads with --standalone.draft_model."""
    algo = get_algorithm("standalone")
    assert not algo.uses_draft_folder and algo.Config().draft_model == ""
    assert get_algorithm("eagle_v3").uses_draft_folder
    assert algo.load_option == "--standalone.draft_model" and get_algorithm("eagle_v3").load_option == "--modeling.draft_path"
    with pytest.raises(ConfigError, match="not a draft folder"):
        build_draft(draft_modeling(algorithm="standalone", vocab="base"), llama_base)


def test_missing_draft_model_and_other_trees_are_config_errors(llama_base):
    algo = get_algorithm("standalone")
    with pytest.raises(ConfigError, match="standalone.draft_model"):
        algo.proposer(llama_base, algo.Config(), None)
    with pytest.raises(ConfigError, match="chain or dynamic trees"):
        algo.proposer(llama_base, algo.Config(draft_model="x"), TreeSpec("auto"))


@pytest.mark.parametrize("tree", [["--inference.tree", "dynamic", "--inference.max_depth", "4", "--inference.top_k",
                                   "3", "--inference.total_tokens", "10"], ["--inference.tree", "chain"]])
def test_cli_standalone_foreign_draft_equals_base_only(base_dirs, draft_dir, tmp_path, tree):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "out.jsonl"
    run_cli(main, "specforge_het.inference", argv=[
        "--modeling.base_model", base_dirs["llama"], "--modeling.algorithm", "standalone",
        "--standalone.draft_model", draft_dir, *tree, "--inference.compare", "--inference.max_new_tokens", "16",
        "--prompts", str(prompts), "--outfile", str(out)])
    line = json.loads(out.read_text().splitlines()[0])
    assert line["config"]["standalone"]["draft_model"] == draft_dir
    assert line["summary"]["identical"] == line["summary"]["compared"] == 3
    turns = {(t["conversation"], t["turn"], t["mode"]): t for t in line["turns"]}
    for (conv, k, mode), t in turns.items():
        if mode == SPEC:
            assert t["text"] == turns[(conv, k, BASE)]["text"]
    assert line["summary"][SPEC]["tau"] >= 1.0


def test_cli_standalone_sampling_runs(base_dirs, draft_dir, tmp_path):
    """Sampling: the draft draws from q with its own generator; SpecInfer's rule verifies (lossless, tested
    in test_standalone_sampling.py); here the CLI path only."""
    prompts = tmp_path / "q.jsonl"
    prompts.write_text(json.dumps(ROWS[1]) + "\n")
    out = tmp_path / "out.jsonl"
    run_cli(main, "specforge_het.inference", argv=[
        "--modeling.base_model", base_dirs["llama"], "--modeling.algorithm", "standalone",
        "--standalone.draft_model", draft_dir, "--inference.tree", "dynamic", "--inference.temperature", "0.8",
        "--inference.max_new_tokens", "12", "--prompts", str(prompts), "--outfile", str(out)])
    summary = json.loads(out.read_text().splitlines()[0])["summary"]
    assert summary[SPEC]["new_tokens"] > 0 and summary[SPEC]["tau"] >= 1.0
