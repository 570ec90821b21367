"""`python -m specforge_het.training.bench`: draft-training throughput per configuration, side by side.

    python -m specforge_het.training.bench --@smollm2 --@eagle_v3 --configs new-online-fp32,new-offline-fp32 \
        --steps 2 --batch 4 --out docs/results/train_throughput.json

Every configuration trains the same draft on the same batches in one process (interleaved rounds,
so machine noise hits all alike) and reports trained tokens/s: non-padding sequence tokens per
second of forward + backward + optimizer step, each token taken through every unroll step (the
loss tokens, assistant tokens with a loss, are reported too). A configuration name is
`<path>-<mode>-<precision>[-ttt<k>][-v<draft vocab size>]`:

  path       new = this repo's trainer pieces (targets at loss positions, fused head loss, split TTT
             attention); legacy = the formulation before them (full [B, T, V] base logits, an
             additive [s, (j+1)s] mask over all unroll keys, per-step logits and soft CE)
  mode       online = the base computes features per batch; offline = features computed once
             beforehand (what stored features give; disk reads are not timed)
  precision  fp32, or bf16 (autocast over float32 master weights)

Batches come from `--dataset.path` (a conversations JSONL) or, by default, from conversations built
from the shipped training prompts (user turn = one prompt, assistant turn = other prompts' text, about
300-600 tokens in all): real text, no generated answers needed.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specforge_het.cli import run_cli
from specforge_het.config import Config, ConfigError
from specforge_het.models.cache import HFCache

console = Console(stderr=True)


def synthetic_rows(tokenizer, n: int, seed: int = 0) -> list[dict]:
    from specforge_het.data.formats import tokenize_conversation

    path = Path(__file__).resolve().parent.parent / "data" / "files" / "train_prompts.jsonl"
    prompts = [json.loads(line)["conversations"][0]["content"] for line in path.open()]
    prompts = [p for p in prompts if len(p) < 400]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer, chars, target = [], 0, rng.randint(1200, 2400)
        while chars < target:
            answer.append(rng.choice(prompts))
            chars += len(answer[-1])
        conv = [{"role": "user", "content": prompts[i % len(prompts)]}, {"role": "assistant", "content": " ".join(answer)}]
        ids, mask = tokenize_conversation(tokenizer, conv, None)
        rows.append({"input_ids": ids, "loss_mask": mask, "key": None})
    return rows


def legacy_loss(draft, base, batch, feats, options):
    """The previous EagleV3 formulation (kept here only to measure against): full base logits, all
    unroll keys under an additive mask, [B, S, V] draft logits and shifted target copies per step."""
    from specforge_het.algorithms.common import draft_targets, shift_left, soft_cross_entropy, ttt_mask

    ids, attn, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    logits_b = base.head(feats[1])
    x, key_valid = ids[:, 1:], attn[:, 1:]
    b, s = x.shape
    probs, valid, _ = draft_targets(draft, logits_b[:, 1:])
    mask = (lm[:, 1:] * key_valid).bool() & valid
    hidden = draft.input_from_base(x, feats[0][:, :-1])
    cache, total = HFCache(), 0.0
    for j in range(options.ttt_steps):
        pos = (torch.arange(s) + j)[None].expand(b, s)
        hidden = draft(shift_left(x, j, 0), hidden, pos, ttt_mask(s, j, key_valid, hidden.dtype), cache)
        ce = soft_cross_entropy(draft.logits(hidden), shift_left(probs, j, 0.0), shift_left(mask, j, False))
        total = total + options.ttt_decay ** j * ce
    return total


class _Run:
    def __init__(self, name: str, cfg: Config, base, rows, batches):
        from specforge_het.algorithms.build import build_draft
        from specforge_het.algorithms.registry import options_of
        from specforge_het.training.data import token_counts
        from specforge_het.training.trainer import DraftTrainingModule

        parts = name.split("-")
        extra = parts[3:]
        if len(parts) < 3 or parts[0] not in ("new", "legacy") or parts[1] not in ("online", "offline") \
                or parts[2] not in ("fp32", "bf16") or not all(p[:3] == "ttt" or p[:1] == "v" for p in extra):
            raise ConfigError(f"bad configuration '{name}': use <new|legacy>-<online|offline>-<fp32|bf16>[-ttt<k>][-v<draft vocab>]")
        self.name, self.path, self.mode, self.bf16 = name, parts[0], parts[1], parts[2] == "bf16"
        self.tcfg = type(cfg.training)(**vars(cfg.training))
        modeling = type(cfg.modeling)(**vars(cfg.modeling))
        self.options = copy.deepcopy(options_of(cfg, modeling.algorithm))
        for p in extra:
            if p.startswith("ttt"):
                self.options.ttt_steps = int(p[3:])
            else:
                modeling.draft_vocab_size = int(p[1:])
        self.draft = build_draft(modeling, base, token_counts(rows, base.vocab_size), seed=0)
        self.draft.train(True)
        stored = list(self.draft.cfg.feature_layers) + [-1] if self.mode == "offline" else None
        self.module = DraftTrainingModule(self.draft, base, self.tcfg, stored, self.options)
        self.opt = torch.optim.AdamW([p for p in self.draft.parameters() if p.requires_grad], lr=1e-5)
        self.base, self.batches = base, batches
        self.feats: dict[int, tuple] = {}
        self.seconds = self.tokens = self.loss_tokens = 0.0

    def _features(self, i: int, batch):
        from specforge_het.training.trainer import base_features

        layers = tuple(self.draft.cfg.feature_layers)
        if self.mode == "online":
            return base_features(self.base, batch["input_ids"], layers, batch["attention_mask"])
        if i not in self.feats:  # offline: computed once, outside the timing (as stored features are)
            self.feats[i] = base_features(self.base, batch["input_ids"], layers, batch["attention_mask"])
        return self.feats[i]

    def step(self, i: int, timed: bool) -> None:
        batch = self.batches[i]
        if self.mode == "offline":
            self._features(i, batch)
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            if self.path == "legacy":
                loss = legacy_loss(self.draft, self.base, batch, self._features(i, batch), self.options)
            else:
                stored = torch.cat(self._features(i, batch), -1) if self.mode == "offline" else None
                b = self.module.make_batch(batch["input_ids"], batch["attention_mask"], batch["loss_mask"], stored)
                total, count, _ = self.module.algorithm.loss(self.draft, b, self.tcfg, self.module.options)
                loss = total / count
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if timed:
            self.seconds += time.perf_counter() - start
            self.tokens += float(batch["attention_mask"].sum())
            self.loss_tokens += float((batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]).sum())


def bench(cfg: Config, presets: list[str], configs: str = "new-online-fp32,new-offline-fp32,legacy-online-fp32",
          steps: int = 2, batch: int = 4, rows: int = 0, out: str = "") -> None:
    """Train each configuration for 1 untimed + `steps` timed batches, interleaved; print and save a table."""
    from specforge_het.models.base import BaseModel
    from specforge_het.training.data import Collator, load_rows

    names = [c.strip() for c in str(configs).split(",") if c.strip()] if isinstance(configs, str) else list(configs)
    m = cfg.modeling
    base = BaseModel.load(m.base_model, m.dtype, m.device, m.attn_implementation)
    data = load_rows(cfg.dataset, base).rows if cfg.dataset.path else synthetic_rows(base.tokenizer, rows or batch * (steps + 1))
    data = sorted(data[: batch * (steps + 1)], key=lambda r: len(r["input_ids"]))  # length-grouped, as training does
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else 0
    collate = Collator(pad)
    batches = [collate([{**r, "input_ids": r["input_ids"][:cfg.dataset.max_length],
                         "loss_mask": r["loss_mask"][:cfg.dataset.max_length]} for r in data[i:i + batch]])
               for i in range(0, len(data) - batch + 1, batch)]
    if len(batches) < 2:
        raise ConfigError("the benchmark needs at least 2 batches (one untimed warm-up)")
    runs = [_Run(n, cfg, base, data, batches) for n in names]
    for i in range(len(batches)):  # interleaved: round i trains batch i in every configuration
        for r in runs:
            r.step(i, timed=i > 0)
    table = Table(title=f"draft training throughput · {m.base_model} {m.algorithm} · batch {batch} · "
                        f"{torch.get_num_threads()} threads")
    for col in ("configuration", "ttt steps", "draft vocab", "trained tokens/s", "loss tokens/s", "timed tokens", "seconds"):
        table.add_column(col, no_wrap=True)
    results = []
    for r in runs:
        res = {"configuration": r.name, "ttt_steps": getattr(r.options, "ttt_steps", None), "draft_vocab": r.draft.cfg.draft_vocab_size, "tokens_per_s": round(r.tokens / r.seconds, 1),
               "loss_tokens_per_s": round(r.loss_tokens / r.seconds, 1), "tokens": r.tokens, "seconds": round(r.seconds, 2)}
        results.append(res)
        table.add_row(r.name, str(getattr(r.options, "ttt_steps", "")), str(r.draft.cfg.draft_vocab_size), f"{res['tokens_per_s']:.1f}", f"{res['loss_tokens_per_s']:.1f}",
                      f"{r.tokens:.0f}", f"{r.seconds:.1f}")
    Console().print(table)
    payload = {"command": "python -m specforge_het.training.bench " + " ".join(sys.argv[1:]),
               "base": m.base_model, "algorithm": m.algorithm, "batch": batch, "timed_batches": len(batches) - 1,
               "threads": torch.get_num_threads(), "results": results,
               "definition": "trained tokens/s = non-padding sequence tokens per second of forward+backward+optimizer "
                             "step, each through every unroll step; loss tokens = assistant tokens with a loss"}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(payload, indent=1) + "\n")
        console.print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(bench, "specforge_het.training.bench")
