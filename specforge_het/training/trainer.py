"""HF Trainer around a draft: the base stays frozen and outside the trained module; every save
is a draft folder that `inference` loads directly (plus the raw state for exact resume). An algorithm
without draft folders (standalone) hands over its own module with the same interface (forward, save)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback

from specforge_het.algorithms.common import TrainBatch, finalize_metrics, target_mask
from specforge_het.algorithms.io import save_draft
from specforge_het.algorithms.registry import algorithm_of
from specforge_het.algorithms.targets import base_targets
from specforge_het.config import ConfigError
from specforge_het.models.base import LAST
from specforge_het.models.build import merged_state_dict
from specforge_het.models.lean import cuda_sdpa_kernels

RAW_STATE = "training_state.safetensors"


class DraftTrainingModule(nn.Module):
    """The module HF Trainer optimises: only the draft is registered; the base is held aside."""

    accepts_loss_kwargs = True  # HF passes num_items_in_batch (the loss is a per-token mean over accumulation)

    def __init__(self, draft, base, tcfg, stored_layers: list[int] | None = None, options=None):
        """tcfg: the `training` section; options: the draft algorithm's own knobs (its `Config`;
        None = its defaults, overridden by same-named fields of tcfg, the legacy flat keys)."""
        super().__init__()
        self.draft = draft
        self._base = [base]
        self.algorithm = algorithm_of(draft)
        self.options = options if options is not None else options_from(self.algorithm, tcfg)
        # FSDP's transformer auto-wrap (accelerate reads `_no_split_modules` of the module it wraps) and
        # DeepSpeed/accelerate device maps: a decoder layer is never split across units
        self._no_split_modules = draft._no_split_modules = layer_class_names(draft)
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
        if features is None:  # online: the base computes features for this batch (its LM head is not run here)
            feats, last = base_features(base, input_ids, tuple(self.draft.cfg.feature_layers), attention_mask)
        else:  # offline: stored features
            feats, last = self._split_stored(features.to(base.dtype))
        vocab = self.draft.vocab
        cap = getattr(base.config, "final_logit_softcapping", None)
        targets = base_targets(last[:, 1:], base.lm_head.weight, target_mask(attention_mask, loss_mask),
                               None if vocab is None else vocab.d2t, cap, getattr(self.tcfg, "loss_chunk", 1024))
        return TrainBatch(input_ids, attention_mask, loss_mask, feats.detach(), targets, last.detach(),
                          base.lm_head.weight, cap)

    def save(self, folder: str, state: dict[str, torch.Tensor], provenance_extra: dict) -> None:
        """Write the draft folder inference loads; `state`: the draft's full state (LoRA merged here)."""
        save_draft(self.draft, folder, extra_provenance=provenance_extra, state=merged_state_dict(self.draft, state))

    def forward(self, input_ids, attention_mask, loss_mask, features=None, **_):
        """Returns {"loss": loss summed over positions, "count": positions, "counters": metric counters}."""
        here = self.draft.fc.weight.device  # a base sharded over GPUs leaves the draft on its last layer's device
        if input_ids.device != here:
            input_ids, attention_mask, loss_mask = input_ids.to(here), attention_mask.to(here), loss_mask.to(here)
            features = None if features is None else features.to(here)
        with cuda_sdpa_kernels(here.type):  # the base's HF forward and the draft's attention: no cuDNN graphs
            batch = self.make_batch(input_ids, attention_mask, loss_mask, features)
            loss, count, counters = self.algorithm.loss(self.draft, batch, self.tcfg, self.options)
        counters["seq_tokens"] = float(attention_mask.sum())
        return {"loss": loss, "count": count, "counters": counters}


def options_from(algorithm, source):
    """The algorithm's `Config` with the fields `source` also has taken from it (defaults for the rest)."""
    import dataclasses

    opts = algorithm.Config()
    for f in dataclasses.fields(opts):
        if hasattr(source, f.name):
            setattr(opts, f.name, getattr(source, f.name))
    return opts


def layer_class_names(draft) -> list[str]:
    """Class names of the draft's decoder layers (e.g. ['LlamaDecoderLayer'])."""
    return sorted({type(layer).__name__ for layer in draft.layers})


@torch.no_grad()
def base_features(base, input_ids, layers: tuple[int, ...], attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(features at `layers`, final normed state) of a whole batch, without the base's LM head."""
    out = base.features(input_ids, tuple(layers), attention_mask, head=False)
    return out.features, out.hidden


class DraftTrainer(Trainer):
    """Per-token loss across accumulation, count-weighted metrics, tokens/s in the logs; saves draft folders."""

    def __init__(self, *args, run_config: dict | None = None, provenance_extra: dict | None = None, **kw):
        super().__init__(*args, **kw)
        self._draft_keys = list(self.model.draft.state_dict())  # names before any FSDP / DeepSpeed wrapping
        self._sums: dict[str, float] = defaultdict(float)
        self._since = time.perf_counter()  # reset when training starts (on_train_begin) and after each log
        self.run_config = run_config or {}
        self.provenance_extra = provenance_extra or {}
        self.throughput = {"seq_tokens": 0.0, "loss_tokens": 0.0, "seconds": 0.0}
        self.totals: dict[str, float] = {}  # tokens trained on since step 0, across resumes

    @property
    def draft(self):
        return self.accelerator.unwrap_model(self.model).draft

    def train(self, *args, **kw):
        self._sums.clear()
        self._since = time.perf_counter()
        return super().train(*args, **kw)

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """Loss positions over every micro-batch of this optimizer step (and every process): each
        micro-batch's loss is its sum over positions / this count, so accumulation equals one big batch."""
        n = sum(target_mask(b["attention_mask"], b["loss_mask"]).sum() for b in batch_samples)
        n = torch.as_tensor(n, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            n = self.accelerator.gather(n).sum()
        return n

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        for k, v in out["counters"].items():
            self._sums[k] += v
        denom = num_items_in_batch if num_items_in_batch is not None else out["count"]
        loss = out["loss"] / torch.as_tensor(denom, device=out["loss"].device).clamp(min=1)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._sums and ("loss" in logs or "train_runtime" in logs):
            secs = time.perf_counter() - self._since
            seq, lt = self._sums.get("seq_tokens", 0.0), self._sums.get("tokens", 0.0)
            if "loss" in logs:
                logs.update({f"train_{k}": round(v, 5) for k, v in finalize_metrics(self._sums).items()})
                logs["train_tokens_per_s"] = round(seq / secs, 1) if secs > 0 else 0.0
                logs["train_loss_tokens_per_s"] = round(lt / secs, 1) if secs > 0 else 0.0
            for k, v in (("seq_tokens", seq), ("loss_tokens", lt), ("seconds", secs)):
                self.throughput[k] += v
            if "loss" in logs:  # running totals, so a checkpoint's log history says how much it was trained on
                if not self.totals:  # a resumed run carries on from its checkpoint's totals
                    last = [h for h in self.state.log_history if "train_seq_tokens_total" in h]
                    self.totals = {k: last[-1][f"train_{k}_total"] if last else 0.0 for k in ("seq_tokens", "loss_tokens")}
                for k, v in (("seq_tokens", seq), ("loss_tokens", lt)):
                    self.totals[k] += v
                    logs[f"train_{k}_total"] = self.totals[k]
            self._sums.clear()
            self._since = time.perf_counter()
        super().log(logs, start_time)

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None or len(dataset) == 0:
            return {}
        paused = time.perf_counter()
        model = self.model
        model.eval()
        sums: dict[str, float] = defaultdict(float)
        loss_sum = 0.0
        for inputs in self.get_eval_dataloader(dataset):
            with self.compute_loss_context_manager():
                out = model(**self._prepare_inputs(inputs))
            loss_sum += float(out["loss"])
            for k, v in out["counters"].items():
                sums[k] += v
        model.train()
        metrics = {f"{metric_key_prefix}_{k}": round(v, 5) for k, v in finalize_metrics(sums).items()}
        metrics[f"{metric_key_prefix}_loss"] = round(loss_sum / max(sums.get("tokens", 0.0), 1.0), 5)
        self._since += time.perf_counter() - paused  # evaluation time is not training time
        self.log(metrics)
        return metrics

    def draft_state(self, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
        """The draft's full state (its own parameter names, on CPU). `state_dict`: the trained module's
        state as HF Trainer hands it to `_save` (gathered on the main process under FSDP / DeepSpeed,
        where the module itself only holds this process's shards); None = the module's own."""
        if state_dict is None:
            state = self.draft.state_dict()
        else:
            state = {k.removeprefix("draft."): v for k, v in state_dict.items() if k.startswith("draft.")}
            want = set(self._draft_keys)
            if set(state) != want:
                raise RuntimeError(f"the state handed to _save does not hold this draft: missing {sorted(want - set(state))[:5]}, "
                                   f"unexpected {sorted(set(state) - want)[:5]}")
        # copies: tensors tied in the module (an LM's embedding and head) are saved apart (safetensors refuses aliases)
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        raw = self.draft_state(state_dict)
        extra = {**self.provenance_extra, "global_step": self.state.global_step}
        self.accelerator.unwrap_model(self.model).save(output_dir, raw, extra)  # a draft folder, or the algorithm's own
        save_file(raw, str(Path(output_dir) / RAW_STATE))
        if self.run_config:
            import json

            from specforge_het.config import RUN_CONFIG

            (Path(output_dir) / RUN_CONFIG).write_text(json.dumps(self.run_config, indent=2) + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_fsdp_enabled:  # sharded parameters: HF reloads the FSDP checkpoint it saved beside the draft
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
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
            keys = ("loss", "train_sim_accept_length", "train_tokens_per_s", "eval_loss", "eval_sim_accept_length")
            shown = " ".join(f"{k}={logs[k]:.4g}" for k in keys if isinstance(logs.get(k), (int, float)))
            if shown:
                self.progress.update(self.task, description=shown)
                self.progress.console.print(f"step {state.global_step}: {shown}")

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()
