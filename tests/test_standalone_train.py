"""Training a standalone draft LM by distillation from the base (algorithms/standalone/distill.py, loss.py,
align.py): the alignment of a base row and its draft spelling (hand-made tokenizers, and a prefix-decoding
oracle on real ones), KL = 0 for the base as its own draft, the loss going down with the base's tokenizer and
with a foreign one, the saved HF folder loading as --standalone.draft_model with greedy output equal to
base-only output, LoRA merged on save, and clear errors for bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import USER_PROMPTS, untied_head_base, write_conversations
from test_train import tiny_cfg
from transformers import AutoModelForCausalLM

from specforge_het.algorithms import get_algorithm
from specforge_het.algorithms.standalone.align import (
    DECODE,
    align_row,
    answer_spans,
    common_boundaries,
    draft_prefix,
    respell,
    token_ends,
)
from specforge_het.algorithms.standalone.config import StandaloneConfig
from specforge_het.algorithms.standalone.distill import DistillModule, check_rows
from specforge_het.algorithms.standalone.vocab import SharedVocab
from specforge_het.config import Config, ConfigError
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.proposer import TreeSpec
from specforge_het.models.base import BaseModel
from specforge_het.testing import CORPUS_B, make_tokenizer, save_tiny_base
from specforge_het.train import build_trainer, check_consistency, main

PROMPTS = USER_PROMPTS[:3]
TREE = TreeSpec("dynamic", max_depth=3, top_k=2, total_tokens=6)


# ---------------------------------------------------------------- hand-made alignment


class PieceTokenizer:
    """A hand-made tokenizer: token i is the UTF-8 bytes pieces[i] (so a character may be split over two
    tokens), decoded like a byte-level BPE; `strip_first` drops a leading space of the first token decoded,
    as SentencePiece decoders do; encode is a greedy longest match."""

    def __init__(self, pieces: list[str | bytes], bos: int | None = None, strip_first: bool = False):
        self.pieces = [p.encode() if isinstance(p, str) else p for p in pieces]
        self.bos_token_id, self.strip_first = bos, strip_first

    def decode(self, ids, **_) -> str:
        text = b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")
        return text[1:] if self.strip_first and text.startswith(" ") else text

    def batch_decode(self, seqs, **_) -> list[str]:
        return [self.decode(s) for s in seqs]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        data, out = text.encode(), []
        while data:
            i = max((i for i, p in enumerate(self.pieces) if p and data.startswith(p)), key=lambda i: len(self.pieces[i]))
            out.append(i)
            data = data[len(self.pieces[i]):]
        return out

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        bos = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        return {"input_ids": bos + self.encode(text)}


# "<s>The café." : the base splits é over two byte tokens; the draft spells it "Th", "e c", "af", "é", "."
BASE_TOK = PieceTokenizer(["<s>", "The", " ca", "f", b"\xc3", b"\xa9", "."], bos=0)
DRAFT_TOK = PieceTokenizer(["<bos>", "Th", "e c", "af", "é", "."], bos=0)
ROW = [0, 1, 2, 3, 4, 5, 6]  # <s> The | ca f \xc3 \xa9 .   (the answer is " café.")
MASK = [0, 0, 1, 1, 1, 1, 1]


def test_token_ends_place_pieces_in_the_text():
    text = "The café."
    assert token_ends(BASE_TOK, ROW[1:], text) == [3, 6, 7, None, 8, 9]  # half of é: no offset
    assert token_ends(DRAFT_TOK, [1, 2, 3, 4, 5], text) == [2, 5, 7, 8, 9]
    # a SentencePiece-like decoder drops the first token's space: pieces decoded in context are still right
    sp = PieceTokenizer([" The", " cat"], strip_first=True)
    assert token_ends(sp, [0, 1], "The cat") == [3, 7]
    assert [len(sp.decode([i])) for i in (0, 1)] == [3, 3]  # (decoded alone, " cat" would lose its space)
    assert token_ends(sp, [0, 1], "The dog") == [3, None]  # a piece that is not the text there is never placed


def test_common_boundaries_and_answer_spans_by_hand():
    assert common_boundaries([0, 3, 6, 7, None, 8, 9], [0, 2, 5, 7, 8, 9]) == [(0, 0), (3, 3), (5, 4), (6, 5)]
    assert common_boundaries([1, 2], [3]) == []
    assert common_boundaries([0, 0, 4], [0, 0, 0, 4]) == [(1, 2), (2, 3)]  # the last token ending at an offset
    assert answer_spans([0, 3, 6, 7, None, 8, 9], MASK) == [(3, 9)]
    assert answer_spans([2, 4, 6, 8], [1, 0, 1, 1]) == [(0, 2), (4, 8)]
    assert answer_spans([2, None, 6], [1, 0, 1]) == [(0, 2)]  # a prompt token inside breaks the span


def test_align_row_by_hand():
    prefix = draft_prefix(DRAFT_TOK)
    assert prefix == [0] and respell(ROW, BASE_TOK, DRAFT_TOK, prefix) == (1, "The café.", [0, 1, 2, 3, 4, 5])
    row = align_row(ROW, MASK, BASE_TOK, DRAFT_TOK, prefix, identity=False)
    assert row.draft_ids == [0, 1, 2, 3, 4, 5]
    # base "The" (1) is followed by answer text but the draft has no boundary after "The"; the half character
    # (4) has none; "." (6) predicts nothing: compared are "f" | "af" and "é" | "é"
    assert row.pairs == [(3, 3), (5, 4)]
    # draft tokens inside the answer " café.": "af", "é", "." ("e c" starts in the prompt), predicted at 2, 3, 4
    assert row.answer_positions == [2, 3, 4]
    same = align_row(ROW, MASK, BASE_TOK, BASE_TOK, [], identity=True)
    assert same.draft_ids == ROW and same.pairs == [(i, i) for i in range(1, 6)] and same.answer_positions == [1, 2, 3, 4, 5]


def test_alignment_agrees_with_prefix_decoding(tok_a):
    """On real tokenizers (the base's and a foreign one): the pairs are exactly the (last) base and draft
    positions whose prefixes decode to the same text, with an answer token next."""
    tok_c = make_tokenizer(CORPUS_B, 400)
    chat = [{"role": "user", "content": "Tell me about the quick fox, naïvely: 東京?"},
            {"role": "assistant", "content": "The lazy dog sleeps; the café in Paris (1000 m) is open."}]
    ids = list(tok_a.apply_chat_template(chat, return_dict=False))
    start = ids.index(tok_a.convert_tokens_to_ids("<|assistant|>")) + 1
    mask = [int(i >= start) for i in range(len(ids))]
    prefix = draft_prefix(tok_c)
    row = align_row(ids, mask, tok_a, tok_c, prefix, identity=False)
    skip, text, draft_ids = respell(ids, tok_a, tok_c, prefix)
    assert row.draft_ids == draft_ids and skip == 0
    base_text = {i: tok_a.decode(ids[:i + 1], **DECODE) for i in range(len(ids))}
    draft_at = {tok_c.decode(draft_ids[len(prefix):j + 1], **DECODE): j for j in range(len(prefix), len(draft_ids))}
    last_base = {t: i for i, t in base_text.items() if text.startswith(t)}
    expected = sorted((i, draft_at[t]) for t, i in last_base.items() if t in draft_at and i + 1 < len(ids) and mask[i + 1])
    assert row.pairs == expected
    assert len(expected) >= 10 and len(expected) < sum(mask)  # a real test: many pairs, not every position


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory, base_dirs, tok_a):
    """The tiny Llama base with an untied random head: sharp, varied next-token distributions."""
    path = tmp_path_factory.mktemp("standalone_train") / "base"
    untied_head_base(base_dirs["llama"], tok_a).model.save_pretrained(path)
    tok_a.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sharp(sharp_dir):
    return BaseModel.load(sharp_dir)


@pytest.fixture(scope="module")
def conv(tmp_path_factory, sharp):
    path = tmp_path_factory.mktemp("standalone_train") / "conv.jsonl"
    write_conversations(path, sharp, PROMPTS, n_tokens=16)
    return path


@pytest.fixture(scope="module")
def lms(tmp_path_factory, tok_a):
    """Tiny draft LMs: a Qwen3 with the base's tokenizer, a Gemma3 with a foreign one (another corpus)."""
    root = tmp_path_factory.mktemp("standalone_lms")
    return {"same": save_tiny_base(root / "same", "qwen3", tok_a, hidden=32, layers=2, seed=5),
            "foreign": save_tiny_base(root / "foreign", "gemma3", make_tokenizer(CORPUS_B, 400), hidden=32, layers=2,
                                      seed=3)}


def standalone_cfg(base_dir, data, out, lm: str, steps: int = 3, **modeling) -> Config:
    cfg = tiny_cfg(base_dir, data, out, algorithm="standalone", **modeling)
    cfg.standalone.draft_model = lm
    cfg.training.per_device_batch_size = len(PROMPTS)  # one batch: every step sees the same rows
    cfg.training.max_steps, cfg.training.learning_rate = steps, 1e-2
    return cfg


def losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_kl_of_the_base_as_its_own_draft_is_zero(sharp, conv, tok_a):
    lm = AutoModelForCausalLM.from_pretrained(sharp.model.config._name_or_path, dtype=torch.float32)
    vocab = SharedVocab.build(tok_a, tok_a, sharp.vocab_size, sharp.vocab_size)
    algo = get_algorithm("standalone")
    module = DistillModule(lm, tok_a, sharp, vocab, Config().training, StandaloneConfig(ce_weight=0.0), algo)
    rows = [tok_a(f"<|user|>{p}<|end|><|assistant|>The lazy dog.<|end|>").input_ids for p in PROMPTS[:2]]
    n = max(map(len, rows))
    ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    mask = attn.clone()
    mask[:, :5] = 0
    out = module(ids, attn, mask)
    c = out["counters"]
    assert int(out["count"]) == int((mask[:, 1:] * attn[:, 1:]).sum()) == c["n_0"]  # every answer position compared
    assert abs(float(out["loss"].detach())) < 1e-3 * c["n_0"] and c["hit1_0"] == c["n_0"]


@pytest.mark.parametrize("pair", ["same", "foreign"])
def test_loss_goes_down(pair, sharp_dir, conv, lms, tmp_path):
    trainer, _ = build_trainer(standalone_cfg(sharp_dir, conv, tmp_path / "run", lms[pair], steps=6), [])
    assert trainer.model.vocab.identity == (pair == "same")
    trainer.train()
    seen = losses(trainer)
    assert len(seen) == 6 and seen[-1] < 0.7 * seen[0], seen
    metrics = [e for e in trainer.state.log_history if "train_compared" in e]
    compared = metrics[0]["train_compared"]
    assert (compared == 1.0) if pair == "same" else (0.3 < compared < 1.0)


def test_trained_folder_is_a_draft_model_and_decodes_as_base_only(sharp_dir, sharp, conv, lms, tmp_path):
    out = tmp_path / "draft"
    cfg = standalone_cfg(sharp_dir, conv, out, lms["foreign"], steps=4)
    cfg.standalone.ce_weight = 0.5
    main(cfg, [])
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "provenance.json").read_text().count('"algorithm": "standalone"') == 1
    algo = get_algorithm("standalone")
    proposer = algo.proposer(sharp, StandaloneConfig(draft_model=str(out)), TREE)
    trained, initial = proposer.draft.model, AutoModelForCausalLM.from_pretrained(lms["foreign"])
    assert not torch.equal(trained.get_output_embeddings().weight, initial.get_output_embeddings().weight)
    ids = sharp.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                              return_dict=False)
    ids = torch.tensor([list(ids)])
    ref = Decoder(sharp).generate(ids, 24)
    res = Decoder(sharp, proposer).generate(ids, 24)
    assert res.tokens == ref.tokens


def test_lora_trains_adapters_and_saves_them_merged(sharp_dir, conv, lms, tmp_path):
    out = tmp_path / "lora"
    trainer, _ = build_trainer(standalone_cfg(sharp_dir, conv, out, lms["same"], steps=3, lora_rank=4), [])
    lm = trainer.model.draft
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "norm" in n for n in trainable)
    assert any("lora_" in n for n in trainable) and not lm.get_output_embeddings().weight.requires_grad
    trainer.train()
    trainer.save_model(str(out))
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in k for k in saved.state_dict())
    x = torch.tensor([[5, 17, 40, 99, 3]])
    lm.eval()
    with torch.no_grad():
        assert torch.allclose(saved(x).logits, lm(x).logits, atol=1e-5)


def test_bad_input_is_refused(sharp_dir, conv, lms, tmp_path):
    no_model = standalone_cfg(sharp_dir, conv, tmp_path / "r", "")
    with pytest.raises(ConfigError, match="standalone.draft_model"):
        check_consistency(no_model)
    cfg = standalone_cfg(sharp_dir, conv, tmp_path / "r", lms["same"], lora_rank=4)
    check_consistency(cfg)  # LoRA on the LM itself: no modeling.init_from needed
    bad = {"mode": ("training", "mode", "offline", "trains online only"),
           "init": ("modeling", "init_from", lms["same"], "init_from"),
           "init_draft": ("modeling", "init_draft", lms["same"], "init_draft"),
           "ce": ("standalone", "ce_weight", -1.0, "ce_weight must be"),
           "missing": ("standalone", "draft_model", str(tmp_path / "nowhere"), "does not load")}
    for section, key, value, message in bad.values():
        cfg = standalone_cfg(sharp_dir, conv, tmp_path / "r", lms["same"])
        setattr(getattr(cfg, section), key, value)
        with pytest.raises(ConfigError, match=message):
            check_consistency(cfg)  # before anything loads: all but a draft LM that is not there
            build_trainer(cfg, [])
    base = SimpleNamespace(vocab_size=300, name="tiny")
    check_rows([{"input_ids": [1, 299]}], base)
    with pytest.raises(ConfigError, match="made for another base"):
        check_rows([{"input_ids": [1, 2]}, {"input_ids": [300]}], base)


def test_resume_equals_uninterrupted(sharp_dir, conv, lms, tmp_path):
    """A checkpoint holds the raw state (the tied embedding and head saved apart) and resumes exactly."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt("killed mid-way")

    def trainer_for(out):
        cfg = standalone_cfg(sharp_dir, conv, out, lms["foreign"], steps=4)
        cfg.training.save_steps, cfg.training.per_device_batch_size = 2, 1
        return build_trainer(cfg, [])[0]

    full = trainer_for(tmp_path / "full")
    full.train()
    killed = trainer_for(tmp_path / "killed")
    killed.add_callback(Kill())
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = trainer_for(tmp_path / "killed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-2"))
    a, b = full.model.draft.state_dict(), resumed.model.draft.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    assert losses(full)[-2:] == pytest.approx(losses(resumed)[-2:], rel=1e-5)


def test_checkpointed_training_never_allows_cudnn_attention(sharp_dir, conv, lms, tmp_path, monkeypatch):
    """The CUDA SDPA restriction (models/lean.py), applied on CPU here: every attention call of a standalone step
    with gradient checkpointing, the draft LM's recomputation in backward included, runs without cuDNN."""
    from test_sdpa_plan import _record_cudnn_flag

    seen = _record_cudnn_flag(monkeypatch)
    cfg = standalone_cfg(sharp_dir, conv, tmp_path / "run", lms["same"], steps=1)
    cfg.training.gradient_checkpointing = True
    trainer, _ = build_trainer(cfg, [])
    trainer.train()
    assert len(seen) > 0 and not any(seen)
