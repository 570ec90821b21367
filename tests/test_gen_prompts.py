"""gen_prompts (Magpie-style prompts), its filters and dedup, mix_prompts and check_prompts, on tiny models."""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import pytest
import torch
from conftest import bias_end_of_turn, chat_cfg

from specforge_het.config import Config
from specforge_het.data import magpie
from specforge_het.data.completions import _RowSampler, complete
from specforge_het.data.dedup import (
    EvalSets,
    FilterSettings,
    NgramIndex,
    PromptFilter,
    normalise,
    text_problem,
)
from specforge_het.data.magpie import UserTurnTemplate, gen_prompts
from specforge_het.data.prompt_mix import PromptsOverlapError, check_prompts, eval_overlaps, mix_prompts, read_prompts
from specforge_het.data_gen import main as data_gen_main
from specforge_het.testing import save_tiny_base

MTB = [json.loads(line) for line in (Path(magpie.FILES) / "mt_bench_questions.jsonl").read_text().splitlines()]
GSM_TEST = [json.loads(line) for line in (Path(magpie.FILES) / "gsm8k_test_questions.jsonl").read_text().splitlines()]
FRESH = "Could you suggest three names for a small bakery that sells sourdough bread and cinnamon rolls?"
OFF = dict(min_chars=1, min_words=1, language="", min_unique=0.0, near_dup=1.0)  # random models write gibberish


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, tok_a):
    return save_tiny_base(tmp_path_factory.mktemp("magpie") / "llama", "llama", tok_a)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory, tok_a):
    """The same tiny model with its chat template removed (like Gemma-3-270M, a base model)."""
    path = tmp_path_factory.mktemp("magpie_plain") / "llama"
    save_tiny_base(path, "llama", tok_a)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return str(path)


@pytest.fixture()
def biased(monkeypatch):
    """A random model says <|end|> about once in 20 tokens only if told to: +4 on its logit."""
    bias_end_of_turn(monkeypatch, magpie)


cfg_for = chat_cfg


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def conv(i, text) -> dict:
    return {"id": f"p{i}", "conversations": [{"role": "user", "content": text}]}


# ---------------------------------------------------------------- template cut and stopping

def test_user_turn_prefix_is_cut_at_the_user_content(tok_a):
    turn = UserTurnTemplate(tok_a)
    assert turn.system
    assert turn.prefix("Be brief.") == "<|system|>Be brief.<|end|><|user|>"
    end = tok_a.convert_tokens_to_ids("<|end|>")
    assert turn.end_of_turn == end and end in turn.end_ids
    # the prefix is exactly what the template renders before a user's content
    full = tok_a.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                     tokenize=False)
    assert full.startswith(turn.prefix("Be brief.") + "Hi")


def test_templates_without_a_separate_system_turn(tok_a):
    folded = ("{% set ns = namespace(sys='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
              "{% set ns.sys = m['content'] + '\n\n' %}{% else %}<|{{ m['role'] }}|>{% if m['role'] == 'user' %}"
              "{{ ns.sys }}{% set ns.sys = '' %}{% endif %}{{ m['content'] }}<|end|>{% endif %}{% endfor %}")
    refusing = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
                "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}")
    tok = copy.deepcopy(tok_a)
    for template in (folded, refusing):
        tok.chat_template = template
        turn = UserTurnTemplate(tok)
        assert not turn.system and turn.prefix("ignored") == "<|user|>"
        assert turn.end_of_turn == tok.convert_tokens_to_ids("<|end|>")
    tok.chat_template = "{% for m in messages %}<|user|>{{ m['content'] | lower }}<|end|>{% endfor %}"
    with pytest.raises(ValueError, match="verbatim"):
        UserTurnTemplate(tok)


def test_finish_stops_at_the_end_of_turn(tok_a):
    turn = UserTurnTemplate(tok_a)
    words = tok_a("What is the capital of France?", add_special_tokens=False)["input_ids"]
    end, user = turn.end_of_turn, tok_a.convert_tokens_to_ids("<|user|>")
    assert turn.finish(words + [end]) == ("What is the capital of France?", "stop")
    assert turn.finish(words) == ("What is the capital of France?", "length")
    assert turn.finish(words[:2] + [user] + words[2:]) == (tok_a.decode(words[:2]).strip(), "special")


def test_complete_stops_each_row_at_its_first_stop_id_and_is_seeded(chat_dir, tok_a):
    model, _, turn = magpie.load_chat_model(cfg_for(chat_dir))
    prompts = [turn.prefix_ids("Be brief."), turn.prefix_ids("You are a helpful assistant. Tell a story.")]
    stops = list(range(5, len(tok_a), 3))  # a third of the vocabulary ends a row: every row stops early
    outs = complete(model, prompts * 3, 30, [1.0, 0.8] * 3, [1, 2, 3, 4, 5, 6], stops, tok_a.pad_token_id)
    for ids in outs:
        assert ids and ids[-1] in stops and not any(t in stops for t in ids[:-1])
    assert any(len(ids) < 30 for ids in outs)
    again = complete(model, prompts * 3, 30, [1.0, 0.8] * 3, [1, 2, 3, 4, 5, 6], stops, tok_a.pad_token_id)
    assert again == outs
    # a row's draws come from its own seed: the same (prompt, seed) in another batch gives the same ids
    alone = complete(model, [prompts[0]], 30, [1.0], [1], stops, tok_a.pad_token_id)
    assert alone[0] == outs[0]
    greedy = complete(model, [prompts[0]], 5, [0.0], [9], [], tok_a.pad_token_id)
    assert len(greedy[0]) == 5


def test_row_sampler_is_an_exact_nucleus_sampler():
    vocab = 2000
    torch.manual_seed(0)
    scores = torch.randn(4, vocab) * torch.tensor([[0.1], [8.0], [0.1], [8.0]])  # flat rows need the full sort
    temps, top_p = [1.0, 0.7, 1.2, 0.0], 0.9
    sampler = _RowSampler([torch.Generator().manual_seed(s) for s in range(4)], temps, top_p, 0, torch.tensor([vocab - 1]))
    picked = sampler(torch.zeros(4, 0, dtype=torch.long), scores).argmax(-1).tolist()
    for i in range(3):  # reference: full sort, nucleus, inverse CDF with the row's own uniform
        probs, order = torch.softmax(scores[i] / temps[i], -1).sort(descending=True)
        probs = probs * (probs.cumsum(0) - probs <= top_p)
        u = torch.rand((), generator=torch.Generator().manual_seed(i)) * probs.sum()
        assert picked[i] == order[int((probs.cumsum(0) <= u).sum())].item()
    assert picked[3] == scores[3].argmax().item()  # temperature 0: greedy
    # the draws follow the distribution: 4000 rows of one distribution, one seed each
    target = torch.tensor([0.5, 0.3, 0.15, 0.05])
    rows = 4000
    sampler = _RowSampler([torch.Generator().manual_seed(s) for s in range(rows)], [1.0] * rows, 1.0, 0, torch.tensor([]))
    tokens = sampler(torch.zeros(rows, 0, dtype=torch.long), target.log().expand(rows, 4)).argmax(-1)
    assert torch.allclose(torch.bincount(tokens, minlength=4) / rows, target, atol=0.03)


# ---------------------------------------------------------------- filters and dedup

def test_length_language_and_repetition_filters():
    ok = "How do I keep my houseplants alive while I am away on holiday for two weeks?"
    assert text_problem(ok, min_chars=20, max_chars=200, min_words=4, language="en", min_unique=0.3) is None
    assert text_problem("Hi there", min_chars=20) == "too short"
    assert text_problem("Hello there, how are you", min_words=6) == "too short"
    assert text_problem(ok * 10, max_chars=200) == "too long"
    assert text_problem("   ") == "empty"
    assert text_problem("Pouvez-vous m'expliquer comment fonctionne la photosynthèse chez les plantes vertes ?",
                        language="en") == "not English"
    assert text_problem("如何证明拉格朗日中值定理，请给出详细步骤", language="en") == "not English"
    code = "Why does this fail?\n```python\ndef f(xs):\n    return sorted(xs)[len(xs)]\n```\nIt raises an IndexError."
    assert text_problem(code, language="en") is None
    assert text_problem("the cat " * 20, min_unique=0.3) == "repetitive"
    with pytest.raises(ValueError, match="'en'"):
        text_problem(ok, language="fr")


def test_exact_and_near_duplicates_are_dropped():
    filt = PromptFilter(FilterSettings(near_dup=0.7), EvalSets())
    base = "Write a short poem about the ocean at night, with the moon shining on the waves and a lonely boat."
    assert filt.check("a", [base]) is None
    assert normalise("  WRITE a short poem... about the OCEAN") == "write a short poem about the ocean"
    assert filt.check("b", ["write a SHORT poem about the ocean at night -- with the moon shining on the waves, "
                            "and a lonely boat!"]) == "exact duplicate"
    assert filt.check("c", [base.replace("lonely", "small")]) == "near duplicate"
    assert filt.check("d", [FRESH]) is None
    assert filt.counts["kept"] == 2 and filt.counts["near duplicate"] == 1
    exact_only = PromptFilter(FilterSettings(near_dup=1.0), EvalSets())
    assert exact_only.check("a", [base]) is None and exact_only.check("c", [base.replace("lonely", "small")]) is None
    with pytest.raises(ValueError, match="near_dup"):
        PromptFilter(FilterSettings(near_dup=0), EvalSets())


def test_ngram_index_is_fast_on_10k_prompts():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(3000)] + ["the", "a", "how", "do", "i", "what", "is"] * 50
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 30))) for _ in range(10_000)]
    index = NgramIndex(3)
    t0 = time.perf_counter()
    dups = 0
    for i, text in enumerate(texts):
        best = index.best(text)
        dups += bool(best and best[1] >= 0.7)
        index.add(str(i), text)
    assert time.perf_counter() - t0 < 30  # O(n * grams); a pairwise scan would take minutes
    assert dups == 0
    assert index.best(texts[123] + " and one more") == ("123", 1.0)


def test_ngram_index_breaks_ties_by_the_earliest_text_whatever_the_hash_seed():
    # 20 texts each share one gram with the query: a tie. Counter order followed the query's set order, which
    # changes with PYTHONHASHSEED, so a cut to few candidates kept a different text in each process (mix6 lost a row)
    query = " ".join(f"q{i}" for i in range(22))
    for cut in (1, 3):
        index = NgramIndex(3)
        for i in range(20):
            index.add(str(i), f"q{i} q{i + 1} q{i + 2} " + " ".join(f"pad{i}x{j}" for j in range(i)))
        assert index.best(query, candidates=cut) == ("0", 1.0)  # text 0 is earliest, and all of it is shared


def test_eval_overlap_drops_copies_and_keeps_fresh_prompts():
    evals = EvalSets()
    assert evals.sizes["mt_bench"] == 160 and evals.sizes["gsm8k_test"] == 1319
    filt = PromptFilter(FilterSettings(), evals)
    copied = MTB[0]["turns"][0]
    assert filt.check("m", [copied.upper().replace(",", "")]) == "overlaps mt_bench"
    assert filt.check("g", ["Please solve this: " + GSM_TEST[7]["question"] + " Show your steps."]) == "overlaps gsm8k_test"
    assert filt.check("f", [FRESH]) is None
    assert {o["eval_set"] for o in filt.overlaps} == {"mt_bench", "gsm8k_test"}
    assert filt.overlaps[0]["eval_id"] == f"{MTB[0]['question_id']}.t1"
    with pytest.raises(ValueError, match="threshold"):
        EvalSets(threshold=0)


def test_shipped_training_prompts_against_the_eval_sets():
    rows, _ = read_prompts(Path(magpie.FILES) / "train_prompts.jsonl")
    hits = eval_overlaps(rows)
    assert not [h for h in hits if h["eval_set"] == "mt_bench"]
    # gsm8k_train-20 is a GSM8K train/test twin (test-632: same stamps problem, other names and numbers)
    assert [(h["id"], h["eval_id"]) for h in hits] == [("gsm8k_train-20", "gsm8k_test-632")]
    assert not eval_overlaps([r for r in rows if r["id"] != "gsm8k_train-20"])


# ---------------------------------------------------------------- the verbs

def test_gen_prompts_is_deterministic_resumable_and_reports(chat_dir, tmp_path, biased):
    kw = dict(n=6, batch_size=4, max_new_tokens=24, **OFF)
    a = Path(gen_prompts(cfg_for(chat_dir), [], str(tmp_path / "a.jsonl"), seed=3, **kw))
    b = Path(gen_prompts(cfg_for(chat_dir), [], str(tmp_path / "b.jsonl"), seed=3, **kw))
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert a.read_text() == b.read_text() and len(rows) == 6
    assert all(r["conversations"][0]["role"] == "user" and r["conversations"][0]["content"] for r in rows)
    c = Path(gen_prompts(cfg_for(chat_dir), [], str(tmp_path / "c.jsonl"), seed=4, **kw))
    assert c.read_text() != a.read_text()
    report = json.loads((tmp_path / "a.report.json").read_text())
    assert report["written"] == 6 and set(report["eval_sets"]) == {"mt_bench", "gsm8k_test", "heldout"}
    assert report["input"] == report["kept"] + sum(report["dropped"].values())
    assert report["throughput"]["new_tokens"] > 0
    # resume: a torn raw file (half a batch, a cut line) ends in the same output
    raw = tmp_path / "a.raw.jsonl"
    lines = raw.read_text().splitlines()
    raw.write_text("\n".join(lines[:6]) + '\n{"index": 5, "te')
    gen_prompts(cfg_for(chat_dir), [], str(a), seed=3, **kw)
    assert a.read_text() == b.read_text()
    with pytest.raises(ValueError, match="other settings.*max_new_tokens"):
        gen_prompts(cfg_for(chat_dir), [], str(a), seed=3, **{**kw, "max_new_tokens": 25})


def test_gen_prompts_filters_what_the_model_writes(chat_dir, tmp_path, biased, monkeypatch):
    """The model 'writes' an MT-Bench question, a duplicate and a fresh prompt: only the fresh one is kept."""
    texts = [MTB[3]["turns"][0], FRESH, FRESH.lower(), "Bonjour, comment allez-vous aujourd'hui mon ami ?"]

    def fake_complete(model, prompt_ids, max_new_tokens, temperatures, seeds, stop_ids, pad_id, top_p=1.0, slots=0):
        tok = fake_complete.tok
        end = tok.convert_tokens_to_ids("<|end|>")
        return [tok(texts[i % len(texts)], add_special_tokens=False)["input_ids"] + [end] for i in range(len(prompt_ids))]

    real = magpie.load_chat_model

    def load(cfg, dtype=""):
        model, tok, turn = real(cfg, dtype)
        fake_complete.tok = tok
        return model, tok, turn

    monkeypatch.setattr(magpie, "load_chat_model", load)
    monkeypatch.setattr(magpie, "complete", fake_complete)
    out = gen_prompts(cfg_for(chat_dir), [], str(tmp_path / "f.jsonl"), n=5, batch_size=4, max_generated=8)
    rows = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert [r["conversations"][0]["content"] for r in rows] == [FRESH]
    dropped = json.loads((tmp_path / "f.report.json").read_text())["dropped"]
    assert dropped["overlaps mt_bench"] == 2 and dropped["not English"] == 2 and dropped["exact duplicate"] == 3


def test_base_model_without_chat_template_is_refused(plain_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="(?s)no chat template.*--@smollm2.*mix_prompts"):
        gen_prompts(cfg_for(plain_dir), [], str(tmp_path / "p.jsonl"), n=2)
    with pytest.raises(SystemExit) as e:
        data_gen_main(["gen_prompts", str(tmp_path / "p.jsonl"), "--modeling.base_model", plain_dir, "--n", "2"])
    assert e.value.code == 2 and "no chat template" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "p.jsonl").exists()


def test_mix_prompts_dedups_filters_and_shuffles_with_a_seed(tmp_path):
    gen = write_jsonl(tmp_path / "gen.jsonl", [conv(i, f"Explain topic number {i} of the course in simple words, please.")
                                              for i in range(20)] + [conv(99, MTB[5]["turns"][0])])
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"question": f"Tom has {i} apples and buys {i + 3} more. How many now?",
                                                "answer": "#### 0"} for i in range(30)]
                      + [{"question": GSM_TEST[11]["question"], "answer": "#### 1"}])
    dup = write_jsonl(tmp_path / "dup.jsonl", [conv(0, "explain TOPIC number 3 of the course, in simple words please")])
    out = tmp_path / "mix.jsonl"
    mix_prompts(Config(), [], str(out), gen, f"{gsm}:25", dup, "train_prompts:10", seed=1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [r["conversations"][0]["content"] for r in rows]
    report = json.loads((tmp_path / "mix.report.json").read_text())
    assert report["input"] == 21 + 25 + 1 + 10
    assert report["dropped"]["overlaps mt_bench"] == 1 and report["dropped"]["exact duplicate"] == 1
    assert len(rows) == report["written"] == report["kept"]
    assert len({r["id"] for r in rows}) == len(rows)
    assert "p0" in {r["id"] for r in rows} and MTB[5]["turns"][0] not in texts
    assert sum(t.startswith("Tom has") for t in texts) + report["dropped"]["overlaps gsm8k_test"] == 25
    again = tmp_path / "again.jsonl"
    mix_prompts(Config(), [], str(again), gen, f"{gsm}:25", dup, "train_prompts:10", seed=1)
    assert again.read_text() == out.read_text()
    other = tmp_path / "other.jsonl"
    mix_prompts(Config(), [], str(other), gen, f"{gsm}:25", dup, "train_prompts:10", seed=2)
    assert other.read_text() != out.read_text()
    with pytest.raises(FileNotFoundError, match="train_prompts"):
        mix_prompts(Config(), [], str(other), str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="at least one SRC"):
        mix_prompts(Config(), [], str(other))


def test_mix_prompts_append_keeps_an_earlier_mix_as_it_is(tmp_path):
    poem = "Write a short poem about the ocean at night, with the moon shining on the waves and a lonely boat."
    src = write_jsonl(tmp_path / "src.jsonl", [conv(0, poem), conv(1, poem.replace("lonely", "small")), conv(2, FRESH)])
    earlier = tmp_path / "mix1.jsonl"
    mix_prompts(Config(), [], str(earlier), src, near_dup=1.0)  # exact only: both poems kept
    new = write_jsonl(tmp_path / "new.jsonl", [conv(3, poem.replace("lonely", "red")), conv(4, MTB[7]["turns"][0]),
                                               conv(5, "How do I repot a cactus without hurting my hands?")])
    out = tmp_path / "mix2.jsonl"
    mix_prompts(Config(), [], str(out), str(earlier), new, append=True, seed=3)
    lines = out.read_text().splitlines(keepends=True)
    assert "".join(lines[:3]) == earlier.read_text()  # rows 0-2 stay what a gen_dataset range answered
    assert [json.loads(line)["id"] for line in lines[3:]] == ["p5"]  # a near duplicate and an eval prompt dropped
    report = json.loads((tmp_path / "mix2.report.json").read_text())
    assert report["sources"][0]["kept"] == 3 and report["dropped"]["near duplicate"] == 1
    refiltered = tmp_path / "refiltered.jsonl"  # without --append the earlier mix is filtered again: a row goes
    mix_prompts(Config(), [], str(refiltered), str(earlier), new, shuffle=False)
    assert not refiltered.read_text().startswith(earlier.read_text())
    same = tmp_path / "same.jsonl"
    mix_prompts(Config(), [], str(same), str(earlier), append=True)
    assert same.read_text() == earlier.read_text()
    with pytest.raises(ValueError, match="drop ':2'"):
        mix_prompts(Config(), [], str(same), f"{earlier}:2", new, append=True)
    leaky = write_jsonl(tmp_path / "leaky.jsonl", [conv(0, FRESH), conv(1, MTB[7]["turns"][0])])
    with pytest.raises(ValueError, match="row 'p1'.*overlaps evaluation prompt mt_bench"):
        mix_prompts(Config(), [], str(same), leaky, new, append=True)
    twice = write_jsonl(tmp_path / "twice.jsonl", [conv(0, FRESH), conv(0, poem)])
    with pytest.raises(ValueError, match="1 unreadable row.*twice.jsonl:2: duplicate id: p0.*without --append"):
        mix_prompts(Config(), [], str(same), twice, append=True)
    assert same.read_text() == earlier.read_text()  # refusals write nothing


def test_check_prompts_verb(tmp_path, capsys):
    clean = write_jsonl(tmp_path / "clean.jsonl", [conv(0, FRESH)])
    assert check_prompts(Config(), [], clean) == 0
    dirty = write_jsonl(tmp_path / "dirty.jsonl", [conv(0, FRESH), conv(1, MTB[10]["turns"][1])])
    with pytest.raises(PromptsOverlapError, match="1 prompt"):
        check_prompts(Config(), [], dirty)
    assert "p1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the command line turns it into exit status 1
        data_gen_main(["check_prompts", dirty])
    assert e.value.code == 1 and "overlap an evaluation set" in " ".join(capsys.readouterr().err.split())
