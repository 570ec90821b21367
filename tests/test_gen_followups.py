"""gen_followups: second user turns for answered conversations (Magpie-style multi-turn data), on a tiny chat model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bias_end_of_turn, chat_cfg

from specforge_het.data import followups, magpie, store
from specforge_het.data.followups import answered, gen_followups
from specforge_het.data.formats import tokenize_conversation
from specforge_het.data.generate import gen_dataset
from specforge_het.data_gen import main as data_gen_main
from specforge_het.testing import save_tiny_base

MTB = [json.loads(line) for line in (Path(magpie.FILES) / "mt_bench_questions.jsonl").read_text().splitlines()]
FRESH = "Could you make the list shorter and put the cheapest option first?"
OFF = dict(min_chars=1, min_words=1, language="", min_unique=0.0, near_dup=1.0)  # random models write gibberish
ANSWERS = ["Here are three ideas: bread, rolls and buns.", "It depends on the oven.", "Yes, " * 40, "No."]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tok_a):
    return save_tiny_base(tmp_path_factory.mktemp("followups") / "llama", "llama", tok_a)


@pytest.fixture()
def biased(monkeypatch):
    """The random model ends its turn about once in 20 tokens."""
    bias_end_of_turn(monkeypatch, followups)


cfg_for = chat_cfg


def answered_folder(root: Path, tok, n: int = 8) -> tuple[Path, Path]:
    """A gen_dataset-like folder of n single-turn conversations (answers cycle through ANSWERS; every 4th was cut)
    plus one two-turn conversation, and the prompt file it was made from."""
    prompts = root / "prompts.jsonl"
    convs = [{"id": f"p{i}", "conversations": [{"role": "user", "content": f"Question {i}: name some bakery items."}]}
             for i in range(n)]
    convs.append({"id": "two", "conversations": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "More."}]})
    prompts.write_text("".join(json.dumps(c) + "\n" for c in convs))
    rows = []
    for i, c in enumerate(convs):
        msgs = [*c["conversations"][:1], {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]}]
        ids, mask = tokenize_conversation(tok, msgs, 0)
        rows.append({"id": c["id"], "index": i, "input_ids": ids, "loss_mask": mask,
                     "finish_reason": "length" if i % 4 == 3 else "stop"})
    folder = root / "answered"
    store.write_part(folder, rows, [], None)
    store.write_meta(folder, {"format": store.FORMAT, "source": str(prompts)})
    return folder, prompts


def test_answered_keeps_single_turn_answers_that_ended_within_the_budget(tmp_path, tok_a, capsys):
    folder, prompts = answered_folder(tmp_path, tok_a)
    got = answered(folder, prompts, tok_a, max_answer_tokens=60)
    # p2/p6 ("Yes, " x 40) are over budget, p3/p7 were cut (length), "two" has two user turns
    assert [g["id"] for g in got] == ["p0", "p1", "p4", "p5"]
    assert got[0] == {"id": "p0", "user": "Question 0: name some bakery items.", "answer": ANSWERS[0]}
    assert got[1]["answer"] == ANSWERS[1]
    with pytest.raises(ValueError, match="(?s)no single-turn conversation.*--max_answer_tokens"):
        answered(folder, prompts, tok_a, max_answer_tokens=1)
    with prompts.open("a") as fh:  # a malformed line of the prompt file is reported and skipped, nothing else lost
        fh.write("{not json\n")
    assert answered(folder, prompts, tok_a, max_answer_tokens=60) == got
    assert "prompts.jsonl" in capsys.readouterr().err


def test_prefix_after_renders_the_conversation_up_to_the_next_user_content(chat_dir, tok_a):
    turn = magpie.UserTurnTemplate(tok_a)
    head = [{"role": "user", "content": "Name a bread."}, {"role": "assistant", "content": "Sourdough."}]
    full = tok_a.apply_chat_template([*head, {"role": "user", "content": "XYZ"}], tokenize=False)
    text = tok_a.decode(turn.prefix_after(head))
    assert text == full[: full.index("XYZ")] and "Sourdough." in text and text.endswith(turn.prefix("")[-8:])


def test_gen_followups_is_deterministic_resumable_and_keeps_turn_one(chat_dir, tmp_path, tok_a, biased):
    folder, _ = answered_folder(tmp_path, tok_a, n=12)
    kw = dict(n=5, batch_size=2, max_new_tokens=24, **OFF)
    a = Path(gen_followups(cfg_for(chat_dir), [], str(tmp_path / "a.jsonl"), str(folder), seed=3, **kw))
    b = Path(gen_followups(cfg_for(chat_dir), [], str(tmp_path / "b.jsonl"), str(folder), seed=3, **kw))
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert a.read_text() == b.read_text() and 1 <= len(rows) <= 5
    for r in rows:
        first, second = r["conversations"]
        assert r["id"].endswith("~fu") and first["content"] == f"Question {r['id'][1:-3]}: name some bakery items."
        assert first["role"] == second["role"] == "user" and second["content"]
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert report["input"] == report["kept"] + sum(report["dropped"].values()) and report["eligible"] == 9
    assert sum(report["kinds"].values()) == len(rows) and set(report["kinds"]) <= set(followups.FOLLOWUP_KINDS)
    c = Path(gen_followups(cfg_for(chat_dir), [], str(tmp_path / "c.jsonl"), str(folder), seed=4, **kw))
    assert c.read_text() != a.read_text()
    raw = tmp_path / "a.raw.jsonl"  # resume from a torn raw file: the same output
    lines = raw.read_text().splitlines()
    raw.write_text("\n".join(lines[:3]) + '\n{"index": 2, "te')
    gen_followups(cfg_for(chat_dir), [], str(a), str(folder), seed=3, **kw)
    assert a.read_text() == b.read_text()
    with pytest.raises(ValueError, match="other settings.*max_new_tokens"):
        gen_followups(cfg_for(chat_dir), [], str(a), str(folder), seed=3, **{**kw, "max_new_tokens": 25})


def test_followups_are_filtered_and_the_writer_sees_the_answer(chat_dir, tmp_path, tok_a, monkeypatch):
    """The model 'writes' an MT-Bench second turn, a fresh follow-up and French, twice over: one fresh pair is kept
    (the second pair is a near-duplicate: the first turns differ in one number); the writer's prompt holds the
    steering system turn and the base's answer."""
    folder, _ = answered_folder(tmp_path, tok_a, n=8)
    texts = [MTB[5]["turns"][1], FRESH, "Bonjour, comment allez-vous aujourd'hui mon ami ?"]
    seen: list[str] = []

    def fake_complete(model, prompt_ids, max_new_tokens, temperatures, seeds, stop_ids, pad_id, top_p=1.0, slots=0):
        end = tok_a.convert_tokens_to_ids("<|end|>")
        seen.extend(tok_a.decode(p) for p in prompt_ids)
        return [tok_a(texts[i % len(texts)], add_special_tokens=False)["input_ids"] + [end] for i in range(len(prompt_ids))]

    monkeypatch.setattr(magpie, "complete", fake_complete)
    out = gen_followups(cfg_for(chat_dir), [], str(tmp_path / "f.jsonl"), str(folder), n=5, batch_size=2)
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [r["conversations"][1]["content"] for r in rows] == [FRESH]
    report = json.loads((tmp_path / "f.report.json").read_text())
    dropped = report["dropped"]
    assert dropped["overlaps mt_bench"] == 2 and dropped["not English"] == 2 and dropped["near duplicate"] == 1
    assert ANSWERS[0] in seen[0] and "The user has read the assistant's answer" in seen[0]


def test_followups_file_is_gen_dataset_input(chat_dir, tmp_path, tok_a, biased):
    """gen_dataset reads the output as it is: one row per follow-up conversation, its first user turn in the prompt
    (answering turn k after turn k-1 is tested in test_data_gen)."""
    folder, _ = answered_folder(tmp_path, tok_a, n=8)
    fu = gen_followups(cfg_for(chat_dir), [], str(tmp_path / "fu.jsonl"), str(folder), n=3, batch_size=2,
                       max_new_tokens=24, **OFF)
    convs = {json.loads(line)["id"]: json.loads(line) for line in Path(fu).read_text().splitlines()}
    cfg = cfg_for(chat_dir)
    g = cfg.dataset_generation
    g.output_dir, g.max_new_tokens, g.batch_size, g.dtype = str(tmp_path / "mt"), 6, 2, "float32"
    gen_dataset(cfg, [], fu)
    ds, _ = store.load_dataset_dir(tmp_path / "mt")
    assert sorted(r["id"] for r in ds) == sorted(convs)
    for r in ds:
        assert convs[r["id"]]["conversations"][0]["content"] in tok_a.decode(r["input_ids"])


def test_cli_needs_the_prompt_file(chat_dir, tmp_path, tok_a, capsys):
    folder, _ = answered_folder(tmp_path, tok_a)
    store.write_meta(folder, {"format": store.FORMAT, "source": str(tmp_path / "moved.jsonl")})
    with pytest.raises(SystemExit) as e:
        data_gen_main(["gen_followups", str(tmp_path / "o.jsonl"), str(folder), "--modeling.base_model", chat_dir])
    assert e.value.code == 2 and "--prompts FILE" in " ".join(capsys.readouterr().err.split())


def test_requests_mode_draws_generic_follow_ups_without_loading_weights(chat_dir, tmp_path, tok_a, monkeypatch):
    folder, _ = answered_folder(tmp_path, tok_a, n=12)
    monkeypatch.setattr(followups, "load_chat_model", lambda *a, **k: pytest.fail("request mode loaded weights"))
    texts = followups.load_requests("shipped")
    a = gen_followups(cfg_for(chat_dir), [], str(tmp_path / "a.jsonl"), str(folder), n=6, batch_size=2,
                      requests="shipped")
    b = gen_followups(cfg_for(chat_dir), [], str(tmp_path / "b.jsonl"), str(folder), n=6, batch_size=2,
                      requests="shipped")
    rows = [json.loads(line) for line in Path(a).read_text().splitlines()]
    assert Path(a).read_text() == Path(b).read_text() and len(rows) == 6
    assert all(r["conversations"][1]["content"] in texts for r in rows)
    assert len({r["conversations"][1]["content"] for r in rows}) > 1  # drawn per conversation, not one for all
    assert json.loads((tmp_path / "a.report.json").read_text())["kinds"] == {"request": 6}
    own = tmp_path / "own.json"
    own.write_text(json.dumps([MTB[0]["turns"][1], "Please shorten it."]))
    c = gen_followups(cfg_for(chat_dir), [], str(tmp_path / "c.jsonl"), str(folder), n=6, requests=str(own))
    kept = {json.loads(line)["conversations"][1]["content"] for line in Path(c).read_text().splitlines()}
    assert kept <= {"Please shorten it."}  # an evaluation prompt is filtered here too
    assert json.loads((tmp_path / "c.report.json").read_text())["dropped"]["overlaps mt_bench"] >= 1
    own.write_text(json.dumps({"requests": []}))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        gen_followups(cfg_for(chat_dir), [], str(tmp_path / "d.jsonl"), str(folder), requests=str(own))


def test_a_folder_that_is_not_a_dataset_is_named_even_with_prompts(chat_dir, tmp_path, tok_a):
    _, prompts = answered_folder(tmp_path, tok_a)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a generated dataset.*--dataset_generation.output_dir"):
        gen_followups(cfg_for(chat_dir), [], str(tmp_path / "o.jsonl"), str(tmp_path / "empty"), prompts=str(prompts),
                      requests="shipped")
