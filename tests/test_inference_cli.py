"""`python -m specforge_het.inference` end to end on tiny local bases, prompt sources and chat rendering."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import DRAFT_KINDS, draft_modeling, subprocess_env

from specforge_het.algorithms.build import build_draft
from specforge_het.algorithms.io import save_draft
from specforge_het.cli import run_cli
from specforge_het.config import RUN_CONFIG
from specforge_het.inference.__main__ import main
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.harness import Record, summarise
from specforge_het.inference.prompts import SHIPPED_MTBENCH, load_conversations, render
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.runner import BASE, SPEC

ROWS = [
    {"question_id": 101, "category": "writing", "turns": ["Write a short poem about the sea.", "Now make it rhyme."]},
    {"question_id": 102, "category": "reasoning", "turns": ["What is the capital of France?", "And of Italy?"]},
]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = subprocess_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "specforge_het.inference", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def run_in_process(args: list[str]):
    return run_cli(main, "specforge_het.inference", argv=args)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def compare_run(base_dirs, prompts_file, tmp_path_factory):
    """One subprocess run: untrained heterogeneous draft built from flags, compare mode, 2 x 2 turns."""
    out_dir = tmp_path_factory.mktemp("cli_run")
    outfile = out_dir / "out.jsonl"
    args = ["--modeling.base_model", base_dirs["llama"], "--modeling.draft_family", "qwen3",
            "--modeling.draft_hidden_size", "48", "--modeling.draft_vocab_size", "100",
            "--inference.compare", "--inference.max_new_tokens", "12",
            "--prompts", str(prompts_file), "--outfile", str(outfile)]
    proc = run_module(args, out_dir)
    return proc, outfile


def test_cli_compare_end_to_end(compare_run, base_dirs):
    proc, outfile = compare_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identical outputs: 4/4" in proc.stdout
    assert "UNTRAINED" in proc.stderr  # no draft_path: the user is told the draft is untrained
    assert "fast paths: auto (" in proc.stderr and "fast paths auto (" in " ".join(proc.stdout.split())

    (line,) = read_lines(outfile)
    assert set(line) >= {"config", "presets", "device", "summary", "turns"}
    cfg = line["config"]
    assert cfg["modeling"]["base_model"] == base_dirs["llama"]
    assert cfg["modeling"]["draft_family"] == "qwen3"
    assert cfg["modeling"]["draft_hidden_size"] == 48 and cfg["modeling"]["draft_vocab_size"] == 100
    assert cfg["inference"]["compare"] is True and cfg["inference"]["max_new_tokens"] == 12
    assert line["presets"] == []

    summary = line["summary"]
    assert summary["identical"] == summary["compared"] == 4
    assert summary["fast_paths"]["mode"] == cfg["inference"]["fast_paths"] == "auto"
    assert isinstance(summary["speedup"], float) and summary["speedup"] > 0
    for mode in (BASE, SPEC):
        assert summary[mode]["turns"] == 4
        assert 0 < summary[mode]["new_tokens"] <= 4 * 12
    assert summary[BASE]["new_tokens"] == summary[SPEC]["new_tokens"]
    assert summary[BASE]["tau"] == 1.0
    assert 1.0 <= summary[SPEC]["tau"] < 1.5  # untrained draft

    turns = line["turns"]
    assert len(turns) == 8
    one = Record("m", "c", 0, 1, 1, 1.0, 1, 1)  # the evaluation harness's JSON shape, + the older names
    assert all(set(t) == set(one.to_json()) | {"mode", "decode_s"} and t["method"] == t["mode"] for t in turns)
    assert set(summary[BASE]) == set(summarise([one])["m"]) | {"turns", "decode_s"}
    assert Counter(t["mode"] for t in turns) == {BASE: 4, SPEC: 4}
    by_key = {(t["conversation"], t["turn"], t["mode"]): t for t in turns}
    assert set(by_key) == {(c, k, m) for c in ("101", "102") for k in (0, 1) for m in (BASE, SPEC)}
    for (conv, k, mode), t in by_key.items():
        assert 1 <= t["new_tokens"] <= 12 and t["prompt_tokens"] > 0
        assert t["text"] == by_key[(conv, k, BASE)]["text"]
        hist = {int(a): c for a, c in t["accept_length_histogram"].items()}
        if mode == BASE:  # one token per step after the prefill's
            assert hist == ({1: t["new_tokens"] - 1} if t["new_tokens"] > 1 else {})
        else:  # the last step may overshoot max_new_tokens
            assert sum(a * c for a, c in hist.items()) >= t["new_tokens"] - 1
            assert t["tau"] == round(sum(a * c for a, c in hist.items()) / max(sum(hist.values()), 1), 3)
    for conv in ("101", "102"):  # the 2nd turn is asked after the 1st answer: a longer prompt
        assert by_key[(conv, 1, BASE)]["prompt_tokens"] > by_key[(conv, 0, BASE)]["prompt_tokens"]

    device = line["device"]
    assert device["device"] == "cpu" and device["dtype"] == "float32"
    assert {"threads", "cpu", "torch"} <= set(device)


def test_saved_run_config_reproduces_the_run(compare_run, prompts_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the `show` table unfolded
    proc, outfile = compare_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = outfile.parent / RUN_CONFIG
    assert saved.is_file()
    (line,) = read_lines(outfile)

    cfg = run_in_process(["show", "--use_saved_json_config", str(saved)])
    assert cfg.to_dict() == line["config"]
    shown = capsys.readouterr().out
    rows = {row.split("│")[1].strip(): row.split("│")[2].strip() for row in shown.splitlines() if row.count("│") >= 4}
    assert rows["inference.max_new_tokens"] == "12" and rows["modeling.draft_hidden_size"] == "48"
    assert rows["inference.compare"] == "True" and rows["modeling.base_model"] == repr(line["config"]["modeling"]["base_model"])

    # the same decoding again from the saved config alone
    outfile2 = tmp_path / "again.jsonl"
    run_in_process(["--use_saved_json_config", str(saved), "--prompts", str(prompts_file), "--outfile", str(outfile2)])
    assert "identical outputs: 4/4" in capsys.readouterr().out
    (line2,) = read_lines(outfile2)
    assert line2["config"] == line["config"]
    texts = [(t["conversation"], t["turn"], t["mode"], t["text"], t["new_tokens"]) for t in line["turns"]]
    assert [(t["conversation"], t["turn"], t["mode"], t["text"], t["new_tokens"]) for t in line2["turns"]] == texts
    assert json.loads((tmp_path / RUN_CONFIG).read_text())["inference"] == line["config"]["inference"]


def test_cli_with_saved_draft_folder(bases, base_dirs, tok_a, tok_b_dir, tmp_path, capsys):
    base = bases["llama"]
    draft = build_draft(draft_modeling(**DRAFT_KINDS["foreign_v3"], tok_dir=tok_b_dir), base, seed=5).eval()
    folder = save_draft(draft, tmp_path / "draft")
    outfile = tmp_path / "out.jsonl"
    prompt, n = "Tell me about the quick brown fox.", 10
    run_in_process(["--modeling.base_model", base_dirs["llama"], "--modeling.draft_path", str(folder),
                    "--inference.tree", "chain", "--inference.max_depth", "3", "--inference.compare",
                    "--inference.max_new_tokens", str(n), "--prompt", prompt, "--outfile", str(outfile)])
    out, err = capsys.readouterr()
    assert "identical outputs: 1/1" in out
    assert "UNTRAINED" not in err  # the draft folder was loaded, not a fresh draft built
    (line,) = read_lines(outfile)
    assert line["config"]["modeling"]["draft_path"] == str(folder)
    assert line["config"]["inference"]["tree"] == "chain"
    assert line["summary"]["identical"] == line["summary"]["compared"] == 1
    spec = next(t for t in line["turns"] if t["mode"] == SPEC)

    # the same accept lengths as the in-memory draft on the same (chat-rendered) prompt
    ids = render(tok_a, [{"role": "user", "content": prompt}])
    res = Decoder(base, DraftProposer(draft, TreeSpec("chain", max_depth=3))).generate(ids, n)
    assert spec["new_tokens"] == len(res.tokens)
    assert spec["accept_length_histogram"] == {str(k): v for k, v in sorted(Counter(res.accept_lengths).items())}
    assert spec["text"] == tok_a.decode(res.tokens, skip_special_tokens=True)


def test_cli_target_model_only_with_prompt(base_dirs, tmp_path, capsys):
    outfile = tmp_path / "out.jsonl"
    run_in_process(["--modeling.base_model", base_dirs["qwen3"], "--inference.target_model_only",
                    "--inference.max_new_tokens", "6", "--inference.warmup", "false", "--inference.fast_paths", "off",
                    "--prompt", "What is the capital of France?", "--outfile", str(outfile)])
    out, err = capsys.readouterr()
    assert "identical outputs" not in out
    assert "UNTRAINED" not in err  # no draft is built at all
    assert "fast paths: off (plain modules" in err
    (line,) = read_lines(outfile)
    assert [(t["conversation"], t["turn"], t["mode"]) for t in line["turns"]] == [("prompt", 0, BASE)]
    assert line["turns"][0]["new_tokens"] == 6
    assert set(line["summary"]) == {BASE, "fast_paths"} and line["summary"]["fast_paths"]["mode"] == "off"


def test_cli_prompt_sources_are_exclusive(base_dirs, prompts_file):
    args = ["--modeling.base_model", base_dirs["llama"], "--prompt", "Hello", "--mtbench", "mtbench:1"]
    with pytest.raises(SystemExit) as err:
        run_in_process(args)
    assert "exactly one of --prompt" in str(err.value.code)  # a message: the process exits with status 1
    with pytest.raises(SystemExit, match="exactly one of"):
        run_in_process(["--modeling.base_model", base_dirs["llama"]])  # none given
    with pytest.raises(SystemExit, match="exactly one of"):
        run_in_process(["--modeling.base_model", base_dirs["llama"], "--prompts", str(prompts_file), "--prompt", "x"])


def test_cli_both_prompt_and_mtbench_exits_nonzero(base_dirs, tmp_path):
    proc = run_module(["--modeling.base_model", base_dirs["llama"], "--prompt", "Hello", "--mtbench", "mtbench:1"],
                      tmp_path)
    assert proc.returncode != 0
    assert "give exactly one of --prompt TEXT, --mtbench FILE[:N] or --prompts FILE.jsonl[:N]" in proc.stderr


# ---------------------------------------------------------------- prompt sources


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_load_conversations_formats_and_count(tmp_path):
    path = write(tmp_path / "p.jsonl", [
        json.dumps({"question_id": 7, "turns": ["a1", "a2"]}),
        "",
        json.dumps({"id": "x", "prompt": "b"}),
        json.dumps({"question": "c"}),
        json.dumps({"text": "d", "id": 9}),
        json.dumps({"id": "g", "conversations": [{"role": "system", "content": "s"}, {"role": "user", "content": "e1"},
                                                 {"role": "assistant", "content": "r"}, {"role": "user", "content": "e2"}]}),
    ])
    convs = load_conversations(path)
    assert [(c.id, c.turns) for c in convs] == [("7", ["a1", "a2"]), ("x", ["b"]), ("2", ["c"]), ("9", ["d"]),
                                                 ("g", ["e1", "e2"])]
    assert [c.id for c in load_conversations(f"{path}:2")] == ["7", "x"]
    assert len(load_conversations(f"{path}:10")) == 5
    # the shipped held-out prompts (data_gen format) load as single- or multi-turn conversations
    held = load_conversations(str(SHIPPED_MTBENCH.parent / "heldout_prompts.jsonl"))
    assert len(held) >= 12 and all(c.turns and all(isinstance(t, str) and t for t in c.turns) for c in held)


def test_load_conversations_errors_name_file_and_line(tmp_path):
    bad_json = write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok"}), "", '{"prompt": "unterminated'])
    with pytest.raises(ValueError, match=rf"{bad_json}:3: not valid JSON"):
        load_conversations(bad_json)
    no_prompt = write(tmp_path / "none.jsonl", [json.dumps({"prompt": "ok"}), json.dumps({"id": 3, "answer": "x"})])
    with pytest.raises(ValueError, match=rf"{no_prompt}:2: no prompt found"):
        load_conversations(no_prompt)
    not_object = write(tmp_path / "list.jsonl", ['["a list"]'])
    with pytest.raises(ValueError, match=rf"{not_object}:1"):
        load_conversations(not_object)
    empty = write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(ValueError, match="no prompts"):
        load_conversations(empty)
    with pytest.raises(FileNotFoundError):
        load_conversations(str(tmp_path / "missing.jsonl"))


def test_load_shipped_mtbench():
    convs = load_conversations("mtbench:2")
    assert len(convs) == 2
    assert all(len(c.turns) == 2 and all(isinstance(t, str) and t for t in c.turns) for c in convs)
    first = json.loads(SHIPPED_MTBENCH.read_text().splitlines()[0])
    assert convs[0].id == str(first["question_id"]) and convs[0].turns == first["turns"]
    assert len(load_conversations("mtbench")) == len(SHIPPED_MTBENCH.read_text().splitlines()) == 80


# ---------------------------------------------------------------- chat rendering


def test_render_uses_the_chat_template(tok_a):
    messages = [{"role": "user", "content": "Hi there"}]
    ids = render(tok_a, messages)
    assert ids.dim() == 2 and ids.shape[0] == 1 and ids.dtype == torch.long
    text = tok_a.decode(ids[0])
    assert "<|user|>" in text and "Hi there" in text
    assert text.endswith("<|assistant|>")
    assert ids[0].tolist() == tok_a.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]
    with_system = tok_a.decode(render(tok_a, messages, system_prompt="Be brief.")[0])
    assert with_system.startswith("<|system|>Be brief.<|end|><|user|>Hi there")
    multi = [*messages, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More?"}]
    text = tok_a.decode(render(tok_a, multi)[0])
    assert text.index("<|assistant|>Hello!") < text.index("<|user|>More?") and text.endswith("<|assistant|>")


def test_render_plain_layout(tok_a):
    messages = [{"role": "user", "content": "Hi there"}]
    assert tok_a.decode(render(tok_a, messages, use_template=False)[0]) == "User: Hi there\nAssistant:"
    text = tok_a.decode(render(tok_a, [*messages, {"role": "assistant", "content": "Yes."},
                                       {"role": "user", "content": "Go on"}], use_template=False, system_prompt="S")[0])
    assert text == "System: S\nUser: Hi there\nAssistant: Yes.\nUser: Go on\nAssistant:"
    no_template = copy.deepcopy(tok_a)
    no_template.chat_template = None  # e.g. a base model without a template: plain layout
    assert tok_a.decode(render(no_template, messages)[0]) == "User: Hi there\nAssistant:"


@pytest.mark.parametrize("key,value", [("lookup_tokens", "-2"), ("lookup_ngram", "0")])
def test_cli_bad_lookup_values_are_config_errors(base_dirs, capsys, key, value):
    with pytest.raises(SystemExit) as err:
        run_in_process(["--modeling.base_model", base_dirs["llama"], "--prompt", "Hello", f"--inference.{key}", value])
    assert err.value.code == 2
    assert f"inference.{key} must be" in capsys.readouterr().err
