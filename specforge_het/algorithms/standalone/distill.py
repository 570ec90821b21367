"""Training a standalone draft LM by distillation from the base, online:

    python -m specforge_het.train --@gemma3 --modeling.algorithm standalone --standalone.draft_model LM \\
        --dataset.path DATA --training.output_dir runs/standalone

`build_module` (the registry's `training_module` hook) returns the module HF Trainer optimises in place of a
draft folder's (training/trainer.py's DraftTrainingModule, same interface): the draft LM, fully or with LoRA
(`--modeling.lora_rank`), and the frozen base held aside. Each step spells every row in the draft's tokens
(align.py), runs the base once for its final states, takes its distribution over the shared vocabulary at the
compared positions only, and hands both to the loss (loss.py). `save` writes an HF model folder (LoRA merged,
the draft's tokenizer, provenance.json) that `--standalone.draft_model FOLDER` loads for decoding, or trains on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from specforge_het.algorithms.common import target_mask
from specforge_het.algorithms.io import provenance
from specforge_het.algorithms.standalone.align import RowAlignment, align_row, draft_prefix
from specforge_het.algorithms.standalone.loss import DistillBatch
from specforge_het.algorithms.standalone.model import load_trainable_lm
from specforge_het.algorithms.standalone.vocab import SharedVocab
from specforge_het.algorithms.targets import base_targets
from specforge_het.errors import ConfigError
from specforge_het.models.build import merged_state_dict
from specforge_het.models.lean import cuda_sdpa_kernels


class DistillModule(nn.Module):
    """Only the draft LM is registered; the base is held aside (never trained, never saved)."""

    accepts_loss_kwargs = True  # HF passes num_items_in_batch: the loss is a per-answer-token mean over accumulation

    def __init__(self, lm: nn.Module, tokenizer, base, vocab: SharedVocab, tcfg, options, algorithm,
                 provenance_extra: dict | None = None):
        super().__init__()
        self.draft, self.tokenizer, self._base = lm, tokenizer, [base]
        self.vocab, self.tcfg, self.options, self.algorithm = vocab, tcfg, options, algorithm
        self.provenance_extra = provenance_extra or {}
        self._prefix = [] if vocab.identity else draft_prefix(tokenizer)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._no_split_modules = list(getattr(lm, "_no_split_modules", None) or [])

    def align(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> list[RowAlignment]:
        """Each right-padded row in the draft's tokens, with its compared and answer positions."""
        tok = self._base[0].tokenizer
        out = []
        for ids, attn, mask in zip(input_ids.tolist(), attention_mask.tolist(), loss_mask.tolist()):
            n = int(sum(attn))
            out.append(align_row(ids[:n], mask[:n], tok, self.tokenizer, self._prefix, self.vocab.identity))
        return out

    @torch.no_grad()
    def make_batch(self, input_ids, attention_mask, loss_mask) -> DistillBatch:
        base = self._base[0]
        rows = self.align(input_ids, attention_mask, loss_mask)
        dev = input_ids.device
        vocab = self.vocab.to(dev)
        where = torch.zeros(input_ids.shape, dtype=torch.bool, device=dev)
        for b, row in enumerate(rows):
            where[b, [i for i, _ in row.pairs]] = True
        hidden = base.features(input_ids, (), attention_mask, head=False).hidden
        targets = base_targets(hidden, base.lm_head.weight, where, vocab.base_ids,
                               getattr(base.config, "final_logit_softcapping", None), getattr(self.tcfg, "loss_chunk", 1024))
        draft_ids, draft_mask = _pad([r.draft_ids for r in rows], self._pad, dev)
        compared = _positions([[j for _, j in r.pairs] for r in rows], dev)
        answer = _positions([r.answer_positions for r in rows], dev)
        return DistillBatch(draft_ids, draft_mask, compared, targets, vocab.draft_ids, answer,
                            draft_ids[answer[:, 0], answer[:, 1] + 1], target_mask(attention_mask, loss_mask).sum())

    def forward(self, input_ids, attention_mask, loss_mask, features=None, **_):
        """Returns {"loss": loss summed over positions, "count": answer positions, "counters": metric counters}."""
        here = self.draft.get_output_embeddings().weight.device  # a sharded base leaves it on its last layer's device
        input_ids, attention_mask, loss_mask = input_ids.to(here), attention_mask.to(here), loss_mask.to(here)
        with cuda_sdpa_kernels(here.type):  # checkpointed layers recompute under the same (context_fn below)
            batch = self.make_batch(input_ids, attention_mask, loss_mask)
            loss, count, counters = self.algorithm.loss(self.draft, batch, self.tcfg, self.options)
        counters["seq_tokens"] = float(attention_mask.sum())
        return {"loss": loss, "count": count, "counters": counters}

    def save(self, folder: str | Path, state: dict[str, torch.Tensor], provenance_extra: dict) -> None:
        """Write what `--standalone.draft_model FOLDER` loads; `state`: the draft's full state (LoRA not merged)."""
        save_lm(self.draft, self.tokenizer, folder, merged_state_dict(self.draft, state),
                {**self.provenance_extra, **provenance_extra})


def _pad(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, U] and their mask."""
    u = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), u), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), u, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)], mask[b, :len(s)] = torch.tensor(s, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def _positions(per_row: list[list[int]], device) -> torch.Tensor:
    """[(row, position)] [N, 2], row by row."""
    flat = [(b, j) for b, js in enumerate(per_row) for j in js]
    return torch.tensor(flat, dtype=torch.long, device=device).reshape(-1, 2)


def save_lm(lm: nn.Module, tokenizer, folder: str | Path, state: dict[str, torch.Tensor], extra: dict) -> Path:
    """An HF model folder (safetensors) with the tokenizer and provenance.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(folder, state_dict=state)
    tokenizer.save_pretrained(folder)
    (folder / "provenance.json").write_text(json.dumps(provenance(extra), indent=2) + "\n")
    return folder


def check_rows(rows: list[dict], base) -> None:
    """Training rows must be base ids of this base: an id past its vocabulary means data made for another base."""
    top = max((max(r["input_ids"]) for r in rows if r["input_ids"]), default=-1)
    if top >= base.vocab_size:
        raise ConfigError(f"the training data holds token id {top} but the base '{base.name}' has {base.vocab_size} "
                          "ids: the data was made for another base. Regenerate it with this base.")


def build_module(algorithm, cfg, base, rows, options) -> DistillModule:
    """The module `train` optimises for a standalone draft (the registry hook `training_module`)."""
    algorithm.check_training(cfg)
    check_rows(rows.rows, base)
    m = cfg.modeling
    dtype = options.draft_dtype or m.draft_dtype or m.dtype
    lm, tokenizer = load_trainable_lm(options.draft_model, dtype, base.device, m.lora_rank)
    if getattr(cfg.training, "gradient_checkpointing", False):
        kind = base.device.type  # backward's recomputation keeps the forward's SDPA kernels (models/lean.py)
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
            "use_reentrant": False, "context_fn": lambda: (cuda_sdpa_kernels(kind), cuda_sdpa_kernels(kind))})
    if base.tokenizer is None:
        raise ConfigError("training a standalone draft needs the base's tokenizer (to spell its rows in the draft's tokens).")
    vocab = SharedVocab.build(base.tokenizer, tokenizer, base.vocab_size, lm.get_output_embeddings().weight.shape[0])
    extra = {"algorithm": algorithm.name, "draft_model": options.draft_model, "base": base.describe(),
             "lora_rank": m.lora_rank, "shared_vocab": vocab.size, "same_tokenizer": vocab.identity}
    return DistillModule(lm, tokenizer, base, vocab, cfg.training, options, algorithm, extra)
