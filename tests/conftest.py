"""Shared fixtures: tiny tokenizers and tiny random bases saved as local HF folders (no Hub), prompts, variants
of the bases (untied or sharpened heads), conversation and prompt files; and the helpers behind them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from specforge_het.config import ModelingConfig
from specforge_het.data.formats import tokenize_conversation
from specforge_het.inference.decoder import Decoder
from specforge_het.models.base import BaseModel
from specforge_het.testing import CORPUS_A, CORPUS_B, make_tokenizer, save_tiny_base

pytest.register_assert_rewrite("sampling_stats")  # its asserts explain themselves like a test's

torch.set_num_threads(1)  # tiny models: one thread is fastest and never oversubscribes shared cores

REPO = Path(__file__).resolve().parent.parent


def real_model_threads() -> int:
    """Threads for a test on a real (embedded) model: this machine's cores shared among the parallel test
    workers (`pytest -n`), so workers never oversubscribe the cores (OpenMP threads then spin and a
    7 s test takes 90)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def chat_cfg(path: str):
    """A Config whose base (the chat model of gen_prompts / gen_followups) is the folder `path`."""
    from specforge_het.config import Config

    cfg = Config()
    cfg.modeling.base_model = path
    return cfg


def bias_end_of_turn(monkeypatch, module) -> None:
    """`module.load_chat_model` loads a random chat model that ends its turn about once in 20 tokens (+4 on the
    end-of-turn logit), so gen_prompts / gen_followups keep some of what it writes."""
    from specforge_het.data import magpie

    real = magpie.load_chat_model

    def load(cfg, dtype=""):
        model, tok, turn = real(cfg, dtype)
        bias = torch.zeros(model.config.vocab_size)
        bias[turn.end_of_turn] = 4.0
        model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
        return model, tok, turn

    monkeypatch.setattr(module, "load_chat_model", load)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run in a subprocess: one thread there too (the same arithmetic, no oversubscribed
    cores), wide help text, then `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **extra}


# ---------------------------------------------------------------- tokenizers and bases


@pytest.fixture(scope="session")
def tok_a():
    """Base tokenizer (byte-level BPE, ~300 tokens, chat template)."""
    return make_tokenizer(CORPUS_A, 300)


@pytest.fixture(scope="session")
def tok_b():
    """A foreign tokenizer: another corpus, another vocabulary (~260 tokens)."""
    return make_tokenizer(CORPUS_B, 260)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tok_b_dir(model_dir, tok_b):
    path = model_dir / "tok_b"
    tok_b.save_pretrained(path)
    return str(path)


def _base_folder(model_dir, family, tok, **kw):
    path = model_dir / f"base_{family}_{kw.get('hidden', 64)}"
    if not (path / "config.json").exists():
        save_tiny_base(path, family, tok, **kw)
    return str(path)


@pytest.fixture(scope="session")
def base_dirs(model_dir, tok_a):
    """Local folders of tiny random bases, width 64: Llama, Qwen3, Gemma3 (sliding window 16)."""
    return {fam: _base_folder(model_dir, fam, tok_a) for fam in ("llama", "qwen3", "gemma3")}


@pytest.fixture(scope="session")
def bases(base_dirs):
    return {fam: BaseModel.load(path) for fam, path in base_dirs.items()}


@pytest.fixture(scope="session")
def llama_base(bases):
    return bases["llama"]


def draft_modeling(algorithm="eagle_v3", vocab="reduced", family="qwen3", hidden=48, tok_dir="", **kw) -> ModelingConfig:
    """Modeling config of a heterogeneous tiny draft (width 48 by default, another family)."""
    return ModelingConfig(algorithm=algorithm, vocab=vocab, draft_family=family, draft_hidden_size=hidden,
                          draft_vocab_size=kw.pop("draft_vocab_size", 120), draft_tokenizer=tok_dir, **kw)


# The three draft kinds every decoder test covers.
DRAFT_KINDS = {
    "eagle_v2": dict(algorithm="eagle_v2", vocab="base"),
    "eagle_v3_reduced": dict(algorithm="eagle_v3", vocab="reduced"),
    "foreign_v3": dict(algorithm="eagle_v3", vocab="foreign"),
}


def ordinary_ids(n: int, start: int = 5) -> torch.Tensor:
    """n ordinary (non-special) base token ids of the tiny tokenizers, [1, n]."""
    return (torch.arange(n) * 7 % 290 + start)[None]


def draft_logits(draft, base, ids: torch.Tensor) -> torch.Tensor:
    """Draft logits for a whole sequence: base features -> draft input -> draft layers -> logits."""
    with torch.no_grad():
        feats = base.features(ids, tuple(draft.cfg.feature_layers)).features
        hidden_in = draft.input_from_base(ids, feats)
        pos = torch.arange(ids.shape[1])[None]
        return draft.logits(draft(ids, hidden_in, pos))


# ---------------------------------------------------------------- prompts


def ids_fixture(text: str):
    """A module-scoped fixture: `text` in the base tokenizer, [1, n]. In a test module: `prompt_ids = ids_fixture(PROMPT)`."""

    @pytest.fixture(scope="module")
    def ids(tok_a):
        return tok_a(text, return_tensors="pt").input_ids

    return ids


# The decoder, proposer and standalone tests' prompt; a module with another prompt defines its own `prompt_ids`.
PROMPT = "A draft tree is verified in one forward pass with a tree attention mask."
prompt_ids = ids_fixture(PROMPT)
# ~40 tokens: with 40 new tokens Gemma3's sliding window (16) is crossed many times over.
LONG_PROMPT = "Explain how a transformer layer works, step by step. Write a short poem about the sea."
long_ids = ids_fixture(LONG_PROMPT)
# The sampling tests' prompt: short, so the exact base distribution of a few new tokens enumerates fast.
SHORT_PROMPT = "Hello"
short_ids = ids_fixture(SHORT_PROMPT)


# ---------------------------------------------------------------- bases with another head


def untied_head_base(path: str, tokenizer, std: float = 0.5, seed: int = 1) -> BaseModel:
    """The tiny base with an untied random LM head: its greedy text no longer just repeats the
    last token, so equality checks cover sequences of many distinct tokens."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, std, generator=torch.Generator().manual_seed(seed))
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return BaseModel(model, tokenizer, name=f"{path}-untied")


class _BuiltOnFirstUse(dict):
    """A dict whose missing entries are made by `make(key)` when first read."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = value = self.make(key)
        return value


@pytest.fixture(scope="module")
def untied(base_dirs, tok_a):
    """family -> the tiny base of that family with an untied random head (untied_head_base), built on first use."""
    return _BuiltOnFirstUse(lambda fam: untied_head_base(base_dirs[fam], tok_a))


SHARPNESS = 4.0  # the tiny base's logits x4: at temperature 1 its top token has p ~ 0.15, not ~ 1/V


def sharpened_base(path: str, tokenizer) -> BaseModel:
    """The tiny Llama base with its (tied) LM head scaled by SHARPNESS into an untied head: an
    informative distribution (neither near uniform nor near one-hot) at temperature ~1."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    head.weight = nn.Parameter(model.get_output_embeddings().weight.detach().clone() * SHARPNESS)
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return BaseModel(model, tokenizer, name="llama-sharp")


@pytest.fixture(scope="module")
def sharp_base(base_dirs, tok_a):
    return sharpened_base(base_dirs["llama"], tok_a)


# ---------------------------------------------------------------- conversation files


USER_PROMPTS = ["Tell me about the fox.", "What is the capital of France?", "Write a short poem about the sea.",
                "Explain a transformer layer.", "Count to ten.", "Describe the lazy dog."]


def greedy_answer(base, prompt: str, n: int) -> tuple[list[int], list[int]]:
    """(prompt ids, base greedy answer ids) with the chat template."""
    ids = tokenize_conversation(base.tokenizer, [{"role": "user", "content": prompt}], None)[0]
    rendered = base.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  return_dict=False)
    gen = Decoder(base).generate(torch.tensor([list(rendered)]), n).tokens
    del ids
    return list(rendered), gen


def write_conversations(path, base, prompts, n_tokens=16) -> list[list[int]]:
    """Conversations whose assistant turn is the base's own greedy answer (as text)."""
    answers = []
    with open(path, "w") as fh:
        for i, p in enumerate(prompts):
            _, gen = greedy_answer(base, p, n_tokens)
            text = base.tokenizer.decode([t for t in gen if t != base.tokenizer.eos_token_id])
            fh.write(json.dumps({"id": f"c{i}", "conversations": [{"role": "user", "content": p},
                                                                  {"role": "assistant", "content": text}]}) + "\n")
            answers.append(gen)
    return answers


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory, bases):
    """Training conversations: USER_PROMPTS answered by the tiny llama base's greedy text (write_conversations)."""
    path = tmp_path_factory.mktemp("conv") / "conv.jsonl"
    write_conversations(path, bases["llama"], USER_PROMPTS)
    return path


def conversations(n: int) -> list[dict]:
    """n conversations: every third has two user turns and an old assistant answer; #4 has its own system turn."""
    rows = []
    for i in range(n):
        turns = [{"role": "user", "content": CORPUS_A[i % len(CORPUS_A)]}]
        if i % 3 == 0:
            turns += [{"role": "assistant", "content": "an OLD answer"}, {"role": "user", "content": f"And then {i}?"}]
        if i == 4:
            turns = [{"role": "system", "content": "Be brief."}, *turns]
        rows.append({"id": f"conv-{i}", "conversations": turns})
    return rows


def write_prompts(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> str:
    """A prompt file for data generation: conversations(6)."""
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", conversations(6))


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """A fresh cache folder for the auto tree's cost model ($SPECFORGE_HET_CACHE); rich lines unwrapped."""
    monkeypatch.setenv("SPECFORGE_HET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path / "cache" / "cost_model"
