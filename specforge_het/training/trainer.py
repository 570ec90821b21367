"""HF Trainer around a draft: the base stays frozen and outside the trained module; every save
is a draft folder that `inference` loads directly (plus the raw state for exact resume)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback

from specforge_het.algorithms.common import TrainBatch
from specforge_het.config import ConfigError
from specforge_het.models.base import LAST
from specforge_het.models.speculative import save_draft

RAW_STATE = "training_state.safetensors"


class DraftTrainingModule(nn.Module):
    """The module HF Trainer optimises: only the draft is registered; the base is held aside."""

    def __init__(self, draft, base, tcfg, stored_layers: list[int] | None = None):
        super().__init__()
        self.draft = draft
        self._base = [base]
        self.tcfg = tcfg
        self.stored_layers = stored_layers
        if stored_layers is not None:
            self._check_stored(stored_layers)

    def _check_stored(self, stored: list[int]) -> None:
        need = list(self.draft.cfg.feature_layers) + [LAST]
        missing = [i for i in need if i not in stored]
        if missing:
            raise ConfigError(f"stored features hold layers {stored} but this draft needs {sorted(set(need))} "
                              f"(missing {missing}). Regenerate with --dataset_generation.store_features for this algorithm, "
                              "or train online (--training.mode online).")

    def _split_stored(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hb = self.draft.cfg.base["hidden_size"]
        if features.shape[-1] != hb * len(self.stored_layers):
            raise ConfigError(f"stored features have width {features.shape[-1]}, expected {len(self.stored_layers)} layers "
                              f"x base width {hb}: the data was made for another base.")
        cols = {layer: features[..., k * hb:(k + 1) * hb] for k, layer in enumerate(self.stored_layers)}
        return torch.cat([cols[i] for i in self.draft.cfg.feature_layers], -1), cols[LAST]

    @torch.no_grad()
    def make_batch(self, input_ids, attention_mask, loss_mask, features=None) -> TrainBatch:
        base = self._base[0]
        if features is None:  # online: the base computes features and its distribution for this batch
            out = base.features(input_ids, tuple(self.draft.cfg.feature_layers), attention_mask)
            feats, last, logits = out.features, out.hidden, out.logits
        else:  # offline: stored features; the base head turns the last layer into its distribution
            feats, last = self._split_stored(features.to(base.dtype))
            logits = base.head(last)
        return TrainBatch(input_ids, attention_mask, loss_mask, feats.detach(), logits.detach(), last.detach())

    def forward(self, input_ids, attention_mask, loss_mask, features=None):
        batch = self.make_batch(input_ids, attention_mask, loss_mask, features)
        loss, metrics = self.draft.algorithm.loss(self.draft, batch, self.tcfg)
        return {"loss": loss, "metrics": metrics}


class DraftTrainer(Trainer):
    """Adds per-position metrics to the logs and saves draft folders."""

    def __init__(self, *args, run_config: dict | None = None, provenance_extra: dict | None = None, **kw):
        super().__init__(*args, **kw)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0
        self.run_config = run_config or {}
        self.provenance_extra = provenance_extra or {}

    @property
    def draft(self):
        return self.accelerator.unwrap_model(self.model).draft

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        for k, v in out["metrics"].items():
            self._sums[k] += v
        self._count += 1
        return (out["loss"], out) if return_outputs else out["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._count and "loss" in logs:
            logs.update({f"train_{k}": round(v / self._count, 5) for k, v in self._sums.items()})
            self._sums.clear()
            self._count = 0
        super().log(logs, start_time)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None or len(dataset) == 0:
            return {}
        model = self.model
        model.eval()
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for inputs in self.get_eval_dataloader(dataset):
            out = model(**self._prepare_inputs(inputs))
            sums["loss"] += out["loss"].item()
            for k, v in out["metrics"].items():
                sums[k] += v
            n += 1
        model.train()
        metrics = {f"{metric_key_prefix}_{k}": round(v / max(n, 1), 5) for k, v in sums.items()}
        self.log(metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        draft = self.draft
        extra = {**self.provenance_extra, "global_step": self.state.global_step}
        save_draft(draft, output_dir, extra_provenance=extra)
        raw = {k: v.detach().contiguous().cpu() for k, v in draft.state_dict().items()}
        save_file(raw, str(Path(output_dir) / RAW_STATE))
        if self.run_config:
            import json

            from specforge_het.config import RUN_CONFIG

            (Path(output_dir) / RUN_CONFIG).write_text(json.dumps(self.run_config, indent=2) + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint) / RAW_STATE
        if not path.is_file():
            raise ConfigError(f"'{resume_from_checkpoint}' is not a training checkpoint ({RAW_STATE} missing).")
        state = load_file(str(path))
        missing, unexpected = self.draft.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"checkpoint '{resume_from_checkpoint}' does not match this draft: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}. Resume with the same presets and overrides.")


class RichProgress(TrainerCallback):
    """A rich progress bar with the latest loss and simulated accept length."""

    def __init__(self):
        self.progress = None
        self.task = None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                     TimeRemainingColumn(), TextColumn("{task.description}"))
            self.progress.start()
            self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.progress is not None and logs:
            keys = ("loss", "train_sim_accept_length", "eval_loss", "eval_sim_accept_length")
            shown = " ".join(f"{k}={logs[k]:.4g}" for k in keys if isinstance(logs.get(k), (int, float)))
            if shown:
                self.progress.update(self.task, description=shown)
                self.progress.console.print(f"step {state.global_step}: {shown}")

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
