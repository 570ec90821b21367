"""Shared fixtures: tiny tokenizers and tiny random bases saved as local HF folders (no Hub)."""

from __future__ import annotations

import pytest
import torch

from specforge_het.config import ModelingConfig
from specforge_het.models.base import BaseModel
from specforge_het.testing import CORPUS_A, CORPUS_B, make_tokenizer, save_tiny_base

torch.set_num_threads(1)  # tiny models: one thread is fastest and never oversubscribes shared cores


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
