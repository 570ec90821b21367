"""Conversations schema and loss masks: the mask is exactly the assistant spans (+ end-of-turn
token) for the chat templates of the supported families, built in code on a tiny tokenizer."""

from __future__ import annotations

import json

import pytest

from specforge_het.chat import plain_text
from specforge_het.data import formats
from specforge_het.data.formats import TooLongError, read_conversations, tokenize_conversation
from specforge_het.data.report import BadInputError, BadInputReport
from specforge_het.inference.prompts import render
from specforge_het.testing import CHAT_TEMPLATE, CORPUS_A, make_tokenizer

CHATML = (  # SmolLM2-135M-Instruct's template, verbatim
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN3 = (  # ChatML; the assistant turn after the last user turn gets an (empty) think block, earlier ones do not
    "{%- set ns = namespace(last_user=-1) -%}{%- for m in messages -%}{%- if m.role == 'user' -%}"
    "{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}{%- if m.role == 'assistant' and loop.index0 > ns.last_user -%}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m.content + '<|im_end|>\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
GEMMA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# name: (template, special tokens to add, bos, end-of-turn token, text before the content of the LAST assistant turn)
TEMPLATES = {
    "tiny": (CHAT_TEMPLATE, [], None, "<|end|>", ""),
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>", ""),
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|begin_of_text|>", "<|eot_id|>", ""),
    "qwen3": (QWEN3, ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<think>\n\n</think>\n\n"),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>", ""),
}

CONV = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "Write a short poem about the sea."},
    {"role": "assistant", "content": "The sea and the sky at night,\nquick waves over the lazy dog."},
]
ANSWERS = [m["content"] for m in CONV if m["role"] == "assistant"]


def template_tokenizer(name: str):
    template, specials, bos, _, _ = TEMPLATES[name]
    tok = make_tokenizer(CORPUS_A, 300)
    extra = {"additional_special_tokens": specials} if specials else {}
    if bos:
        extra["bos_token"] = bos
    if extra:
        tok.add_special_tokens(extra)
    tok.chat_template = template
    return tok


def runs(mask: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of 1 in a mask, as [start, end)."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def masked_texts(tok, ids, mask) -> list[str]:
    return [decode(tok, ids[s:e]) for s, e in runs(mask)]


def expected_texts(name: str) -> list[str]:
    _, _, _, end, last_prefix = TEMPLATES[name]
    return [a + end for a in ANSWERS[:-1]] + [last_prefix + ANSWERS[-1] + end]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_loss_mask_is_exactly_the_assistant_spans(name):
    tok = template_tokenizer(name)
    ids, mask = tokenize_conversation(tok, CONV, max_length=4096)
    assert len(ids) == len(mask)
    assert ids == list(tok.apply_chat_template(CONV, tokenize=True, return_dict=False))
    assert masked_texts(tok, ids, mask) == expected_texts(name)
    unmasked = decode(tok, [i for i, m in zip(ids, mask) if not m])
    assert "capital of France?" in unmasked and "Paris" not in unmasked and "terse" in unmasked


@pytest.mark.parametrize("name", [n for n in TEMPLATES if n != "qwen3"])
def test_offset_fallback_gives_the_same_masks(name, monkeypatch):
    """Force the character-offset path (used for templates that are not prefix-stable)."""
    tok = template_tokenizer(name)
    expected = tokenize_conversation(tok, CONV, max_length=4096)
    monkeypatch.setattr(formats, "_span_by_tokens", lambda *a: None)
    assert tokenize_conversation(tok, CONV, max_length=4096) == expected


def test_qwen3_template_is_not_prefix_stable_and_uses_offsets(monkeypatch):
    tok = template_tokenizer("qwen3")
    calls = []
    original = formats._span_by_offsets
    monkeypatch.setattr(formats, "_span_by_offsets", lambda *a: calls.append(1) or original(*a))
    tokenize_conversation(tok, CONV, max_length=4096)
    assert calls == [1]  # the first assistant turn: rendered alone it gets a think block, in the whole it has none


def test_plain_layout_without_template_matches_inference_render(tok_a):
    tok = template_tokenizer("tiny")
    tok.chat_template = None
    ids, mask = tokenize_conversation(tok, CONV[1:], max_length=4096)
    assert masked_texts(tok, ids, mask) == [f" {a}\n" for a in ANSWERS]
    prompt = render(tok, CONV[1:2], use_template=False)[0].tolist()
    assert tok(plain_text(CONV[1:2], True)).input_ids == prompt
    assert ids[: len(prompt)] == prompt and mask[len(prompt)] == 1 and not any(mask[: len(prompt)])
    # use_template=False forces the plain layout on a tokenizer that has a template
    assert tokenize_conversation(tok_a, CONV[1:], 4096, use_template=False)[0] != tokenize_conversation(tok_a, CONV[1:], 4096)[0]


@pytest.mark.parametrize("name", ["tiny", "chatml", "gemma"])
def test_mask_starts_where_inference_prompt_ends(name):
    """The prompt the decoder renders is a token prefix of the training sequence; the mask starts right after it."""
    tok = template_tokenizer(name)
    ids, mask = tokenize_conversation(tok, CONV[1:3], max_length=4096, system_prompt="Be brief.")
    prompt = render(tok, CONV[1:2], system_prompt="Be brief.")[0].tolist()
    assert ids[: len(prompt)] == prompt
    assert runs(mask)[0][0] == len(prompt)


def test_system_prompt_added_only_without_a_system_turn():
    tok = template_tokenizer("chatml")
    ids, _ = tokenize_conversation(tok, CONV[1:3], 4096, system_prompt="Be brief.")
    assert "Be brief." in decode(tok, ids) and "SmolLM" not in decode(tok, ids)
    ids, _ = tokenize_conversation(tok, CONV, 4096, system_prompt="Be brief.")
    assert "Be brief." not in decode(tok, ids) and "terse" in decode(tok, ids)


def test_prompt_only_conversation_has_empty_mask(tok_a):
    ids, mask = tokenize_conversation(tok_a, [{"role": "user", "content": "hello"}], 4096)
    assert ids and not any(mask)


def test_too_long_names_count_and_limit(tok_a):
    n = len(tokenize_conversation(tok_a, CONV, None)[0])
    with pytest.raises(TooLongError, match=f"{n} tokens, more than max_length 10"):
        tokenize_conversation(tok_a, CONV, max_length=10)
    assert len(tokenize_conversation(tok_a, CONV, max_length=n)[0]) == n


def test_template_refusal_is_a_value_error():
    tok = template_tokenizer("gemma")
    with pytest.raises(ValueError, match="must alternate"):
        tokenize_conversation(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], 4096)


def write_lines(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_read_conversations_reports_and_skips_bad_lines(tmp_path):
    good = {"id": "a", "conversations": [{"role": "user", "content": "hi"}]}
    path = write_lines(tmp_path / "c.jsonl", [
        good,
        "{not json",
        {"id": "b", "conversations": []},
        {"id": "c", "conversations": [{"role": "bot", "content": "x"}]},
        {"id": "d", "conversations": [{"role": "user", "content": 3}]},
        "",
        {"id": "a", "conversations": [{"role": "user", "content": "again"}]},
        {"conversations": [{"role": "user", "content": "no id"}]},
        {"id": "e", "conversations": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]},
    ])
    report = BadInputReport(strict=False)
    rows = read_conversations(path, report)
    assert [r["id"] for r in rows] == ["a", "e"]
    assert report.count == 6
    assert [(p.line, p.category) for p in report.problems] == [
        (2, "malformed JSON"), (3, "empty conversation"), (4, "unknown role"),
        (5, "content is not a string"), (7, "duplicate id"), (8, "missing id")]
    with pytest.raises(BadInputError, match=r"c\.jsonl:2: malformed JSON.*drop --dataset_generation\.strict"):
        read_conversations(path, BadInputReport(strict=True))


def test_write_conversations_round_trip(tmp_path):
    rows = [{"id": "x", "conversations": [{"role": "user", "content": "héllo\u2028next\x85"}]}]
    out = tmp_path / "sub" / "o.jsonl"
    assert formats.write_conversations(out, rows) == 1
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1 and "héllo" in out.read_text(encoding="utf-8")
    assert read_conversations(out, BadInputReport(False)) == rows
    assert [p.name for p in out.parent.iterdir()] == ["o.jsonl"]
