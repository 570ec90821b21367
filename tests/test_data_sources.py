"""prepare_data: every source layout converts to the conversations schema; bad rows are reported."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from specforge_het.config import Config
from specforge_het.data import sources
from specforge_het.data.formats import read_conversations
from specforge_het.data.report import BadInputError, BadInputReport
from specforge_het.data.sources import convert_row, prepare_data

SHARED = Path("/work/shared/datasets")
SHIPPED = Path(sources.__file__).parent / "files" / "train_prompts.jsonl"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def run(tmp_path, rows_or_text, name="src.jsonl", strict=False, **kw):
    """Write a source, run prepare_data on it; returns (rows read back, console text)."""
    src = tmp_path / name
    if isinstance(rows_or_text, str):
        src.write_text(rows_or_text)
    else:
        src.write_text("\n".join(json.dumps(r) for r in rows_or_text) + "\n")
    cfg = Config()
    cfg.dataset_generation.strict = strict
    out = tmp_path / "out.jsonl"
    buf = io.StringIO()
    prepare_data(cfg, [], str(src), str(out), console=Console(file=buf, width=200), **kw)
    return read_conversations(out, BadInputReport(strict=True)), buf.getvalue()


CASES = {
    "sharegpt": ({"id": "s1", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                                {"from": "gpt", "value": "Hello!"}]},
                 [{"role": "system", "content": "Be kind."}, user("Hi"), assistant("Hello!")]),
    "sharegpt_items": ({"items": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, [user("Q"), assistant("A")]),
    "messages": ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
                 [user("Q"), assistant("A")]),
    "messages_in_conversations": ({"conversations": [{"role": "user", "content": "Q"}]}, [user("Q")]),
    "turns": ({"question_id": 81, "turns": ["first", "second"]}, [user("first"), user("second")]),
    "question": ({"question": "2+2?", "answer": "4\n#### 4"}, [user("2+2?")]),
    "prompt": ({"uid": "ab12", "prompt": "Write a poem"}, [user("Write a poem")]),
    "instruction": ({"id": "seed_task_1", "instruction": "Classify.", "instances": [{"input": "a cat", "output": "animal"}]},
                    [user("Classify.\n\na cat")]),
    "instruction_no_input": ({"instruction": "Tell a joke.", "instances": [{"input": "", "output": "..."}]},
                             [user("Tell a joke.")]),
    "alpaca": ({"instruction": "Sum", "input": "1 2", "output": "3"}, [user("Sum\n\n1 2")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_layout_converts(tmp_path, case):
    row, expected = CASES[case]
    rows, text = run(tmp_path, [row])
    assert rows[0]["conversations"] == expected
    assert "rows written" in text and "1" in text


def test_ids_kept_or_made_from_stem_and_index(tmp_path):
    rows, _ = run(tmp_path, [CASES["turns"][0], CASES["question"][0], CASES["prompt"][0], {"question": "x"}], name="gsm.jsonl")
    assert [r["id"] for r in rows] == ["81", "gsm-1", "ab12", "gsm-3"]


def test_keep_answers(tmp_path):
    rows, _ = run(tmp_path, [CASES["question"][0], CASES["instruction"][0]], keep_answers=True)
    assert rows[0]["conversations"][1] == assistant("4\n#### 4")
    assert rows[1]["conversations"][1] == assistant("animal")


def test_json_list_reports_real_line_numbers(tmp_path):
    data = [CASES["sharegpt"][0], {"id": "s2", "conversations": [{"from": "robot", "value": "x"}]}]
    text = json.dumps(data, indent=2)
    report = BadInputReport(False)
    src = tmp_path / "share.json"
    src.write_text(text)
    rows, _ = sources.convert_source(str(src), report)
    assert [r["id"] for r in rows] == ["s1"]
    bad_line = text.splitlines().index("  {", 2) + 1  # the second item starts here
    assert [(p.line, p.category) for p in report.problems] == [(bad_line, "unknown role")]


def test_bad_rows_reported_with_line_and_reason(tmp_path):
    text = "\n".join([
        json.dumps({"id": "a", "prompt": "ok"}),
        "{broken",
        json.dumps({"id": "b", "conversations": []}),
        json.dumps({"id": "c", "messages": [{"role": "narrator", "content": "x"}]}),
        json.dumps({"id": "a", "prompt": "again"}),
        json.dumps({"id": "d", "foo": 1}),
        json.dumps({"id": "e", "prompt": "   "}),
        json.dumps([1, 2]),
        json.dumps({"id": "f", "messages": [{"role": "assistant", "content": "only me"}]}),
    ])
    rows, out = run(tmp_path, text)
    assert [r["id"] for r in rows] == ["a"]
    for where, why in [(2, "malformed JSON"), (3, "empty conversation"), (4, "unknown role"), (5, "duplicate id"),
                       (6, "unrecognised row"), (7, "empty content"), (8, "not a JSON object"), (9, "no user turn")]:
        assert f"src.jsonl:{where}: {why}" in out
    assert "bad inputs skipped: 8" in out


def test_strict_fails_and_writes_nothing(tmp_path):
    with pytest.raises(BadInputError, match=r"src\.jsonl:2: malformed JSON.*Nothing was written to .*out\.jsonl"):
        run(tmp_path, json.dumps({"prompt": "ok"}) + "\n{broken\n", strict=True)
    assert not (tmp_path / "out.jsonl").exists()


def test_existing_output_survives_a_failed_run(tmp_path):
    run(tmp_path, [{"prompt": "first"}])
    with pytest.raises(BadInputError):
        run(tmp_path, "{broken\n", strict=True)
    assert read_conversations(tmp_path / "out.jsonl", BadInputReport(True))[0]["conversations"] == [user("first")]


def test_limit_and_max_prompt_chars(tmp_path):
    rows, out = run(tmp_path, [{"prompt": "x" * 50}, {"prompt": "short"}, {"prompt": "tiny"}, {"prompt": "more"}],
                    limit=2, max_prompt_chars=10)
    assert [r["conversations"][0]["content"] for r in rows] == ["short", "tiny"]
    assert "filtered" in out


def test_forced_kind_and_unknown_kind(tmp_path):
    row = {"prompt": "p", "question": "q"}
    assert convert_row(row, "question")[1] == [user("q")]
    assert convert_row(row)[1] == [user("q")]  # auto: question before prompt
    with pytest.raises(ValueError, match="unknown source kind 'sharegtp'"):
        run(tmp_path, [row], kind="sharegtp")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare_data(Config(), [], str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl"))


def test_hub_unreachable_says_so(tmp_path, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="Hub is unreachable.*pass a local .jsonl/.json file"):
        prepare_data(Config(), [], "someone/chats", str(tmp_path / "o.jsonl"))


def test_hub_dataset_rows_convert(tmp_path, monkeypatch):
    import datasets

    seen = {}

    def fake(name, subset, split):
        seen.update(name=name, subset=subset, split=split)
        return datasets.Dataset.from_dict({"question": ["a?", "b?"], "answer": ["1", "2"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    prepare_data(Config(), [], "openai/gsm8k", str(tmp_path / "o.jsonl"), subset="main", split="test",
                 console=Console(file=io.StringIO()))
    rows = read_conversations(tmp_path / "o.jsonl", BadInputReport(True))
    assert seen == {"name": "openai/gsm8k", "subset": "main", "split": "test"}
    assert [r["id"] for r in rows] == ["gsm8k-0", "gsm8k-1"]


@pytest.mark.parametrize("name", ["sharegpt_dummy_conversations.json", "self_instruct_seed_tasks.jsonl",
                                  "arena_hard_v2_questions.jsonl", "mt_bench_questions.jsonl"])
def test_real_example_files_convert(tmp_path, name):
    if not (SHARED / name).is_file():
        pytest.skip(f"{SHARED / name} not present")
    report = BadInputReport(strict=False)
    rows, counts = sources.convert_source(str(SHARED / name), report, limit=50)
    assert len(rows) == 50 and report.count == 0
    assert all(r["conversations"][0]["role"] in ("user", "system") for r in rows)


def test_shipped_train_prompts_are_valid_and_never_mtbench():
    rows = read_conversations(SHIPPED, BadInputReport(strict=True))
    assert len(rows) == 875
    assert all(t["role"] == "user" for r in rows for t in r["conversations"])
    mtbench = Path(sources.__file__).parent / "files" / "mt_bench_questions.jsonl"
    eval_prompts = {t for line in mtbench.read_text().splitlines() for t in json.loads(line)["turns"]}
    assert not eval_prompts & {t["content"] for r in rows for t in r["conversations"]}


def test_unicode_line_separators_inside_strings_do_not_split_rows(tmp_path):
    rows, out = run(tmp_path, json.dumps({"prompt": "a\u2028b\x85c"}, ensure_ascii=False) + "\n")
    assert rows[0]["conversations"] == [user("a\u2028b\x85c")] and "bad inputs" not in out


def test_shipped_train_prompts_hold_no_gsm8k_test_question():
    if not (SHARED / "gsm8k_test.jsonl").is_file():
        pytest.skip("gsm8k_test.jsonl not present")
    test_qs = {json.loads(line)["question"] for line in (SHARED / "gsm8k_test.jsonl").read_text().split("\n") if line}
    shipped = {t["content"] for r in read_conversations(SHIPPED, BadInputReport(True)) for t in r["conversations"]}
    assert not test_qs & shipped
