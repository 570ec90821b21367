"""`python -m specforge_het.train`: train a draft for a base (EagleV2 / EagleV3 presets), online or offline.

    python -m specforge_het.train --@smollm2 --@eagle_v3 --dataset.path data/smollm2 --training.output_dir runs/v3

Built on HF Trainer: `torchrun --nproc_per_node N -m specforge_het.train ...` runs DDP, one GPU per process
(training/devices.py); DeepSpeed and FSDP configs pass through under torchrun on GPUs
(`--training.deepspeed configs/deepspeed_zero2.json`, `--training.fsdp "full_shard auto_wrap"`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import specforge_het.algorithms  # noqa: F401  (registers the algorithms and their config sections)
from specforge_het.cli import run_cli
from specforge_het.config import Config, ConfigError, save_json_config
from specforge_het.models.precision import fast_bf16

console = Console(stderr=True)


def check_consistency(cfg: Config) -> None:
    """Refuse presets that contradict themselves, naming the keys."""
    t = cfg.training
    algo, _ = algorithm_options(cfg)  # a known algorithm, and its own knobs consistent
    algo.check_training(cfg)  # the modeling and training keys it reads (a new draft folder's, by default)
    if t.bf16 and t.precision == "fp32":
        raise ConfigError("training.bf16 = true contradicts training.precision = fp32: drop the legacy --training.bf16.")
    if t.loss_chunk < 1:
        raise ConfigError("training.loss_chunk must be >= 1.")


def algorithm_options(cfg: Config):
    """(the draft algorithm, its own knobs), checked; ConfigError for an unknown algorithm or bad knobs."""
    from specforge_het.algorithms import get_algorithm
    from specforge_het.algorithms.registry import options_of

    try:
        algo = get_algorithm(cfg.modeling.algorithm)
    except ValueError as exc:
        raise ConfigError(f"modeling.algorithm: {exc}") from None
    options = options_of(cfg, algo.name)
    algo.check(options)
    return algo, options


def draft_dtype(m) -> str:
    """The dtype of the draft's trained weights: --modeling.draft_dtype, or the base's dtype."""
    return m.draft_dtype or m.dtype


def use_bf16(cfg: Config, device: str | None = None) -> bool:
    """The resolved training precision: True = bfloat16 autocast over float32 master weights.
    `device`: the resolved training device (default: --modeling.device as given)."""
    t = cfg.training
    if t.bf16 or t.precision == "bf16":
        return True
    return (t.precision == "auto" and draft_dtype(cfg.modeling) == "float32"
            and fast_bf16(device or cfg.modeling.device))


def _command_args() -> list[str] | None:
    """This command's arguments when run as `python -m specforge_het.train` (quoted in device errors)."""
    return sys.argv[1:] if Path(sys.argv[0]).name == "train.py" else None


def device_plan(cfg: Config):
    """The one device of this training process (base and draft), from the launch: see training/devices.py."""
    from specforge_het.training.devices import plan_training_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return plan_training_device(cfg.modeling.device, os.environ, count, _command_args(), cfg.modeling.device_map)


def training_arguments(cfg: Config, has_eval: bool, plan=None):
    from transformers import TrainingArguments

    t = cfg.training
    plan = plan or device_plan(cfg)
    eval_every = t.eval_steps if has_eval and t.eval_steps > 0 else None
    return TrainingArguments(
        output_dir=t.output_dir, per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate, num_train_epochs=t.num_epochs, max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio, max_grad_norm=t.max_grad_norm, lr_scheduler_type="linear",
        seed=t.seed, data_seed=t.seed, logging_steps=t.logging_steps, save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, report_to=[] if t.report_to == "none" else [t.report_to],
        remove_unused_columns=False, use_cpu=plan.use_cpu, disable_tqdm=True,
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every,
        ddp_backend=t.ddp_backend or None, ddp_find_unused_parameters=True,
        deepspeed=t.deepspeed or None, fsdp=t.fsdp or "", dataloader_num_workers=t.dataloader_num_workers,
        dataloader_persistent_workers=t.dataloader_num_workers > 0,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        label_names=[], bf16=use_bf16(cfg, plan.device),
    )


def _new_draft(cfg: Config, base, rows):
    """The draft to train: a trained folder to continue (modeling.init_draft), else a new one; in training dtype."""
    from specforge_het.algorithms.build import build_draft, grow_layers, warm_start_draft, widen_vocab
    from specforge_het.models.base import resolve_dtype
    from specforge_het.training.data import token_counts

    m = cfg.modeling
    if m.widen_vocab and not m.init_draft:
        raise ConfigError("modeling.widen_vocab widens a trained draft's vocabulary: give --modeling.init_draft, or "
                          "choose a new draft's size with --modeling.draft_vocab_size.")
    if m.grow_layers < 0:
        raise ConfigError(f"modeling.grow_layers is the number of layers to add: >= 1, or 0 to keep the draft's; "
                          f"got {m.grow_layers}.")
    if m.grow_layers and not m.init_draft:
        raise ConfigError("modeling.grow_layers adds layers to a trained draft: give --modeling.init_draft, or "
                          "choose a new draft's depth with --modeling.draft_num_layers.")
    if m.init_draft:
        draft = warm_start_draft(m, base)
        console.print(f"modeling.init_draft: architecture and vocabulary from {m.init_draft} "
                      f"({draft.cfg.family}, width {draft.cfg.hidden_size}, vocab {draft.cfg.vocab} "
                      f"{draft.cfg.draft_vocab_size}); other modeling.* architecture keys are not used")
        if m.widen_vocab:
            counts = token_counts(rows.rows, base.vocab_size)
            share = lambda d: float(counts[d.vocab.d2t.cpu()].sum() / counts.sum().clamp(min=1))  # noqa: E731
            before = share(draft) if draft.vocab is not None else 0.0
            draft = widen_vocab(draft, base, counts, m.widen_vocab, m.widen_init)
            console.print(f"modeling.widen_vocab: {draft.cfg.draft_vocab_size} rows (asked {m.widen_vocab}; only tokens "
                          f"the data uses are added); the data's answer tokens it can propose: {before:.1%} -> "
                          f"{share(draft):.1%}")
        if m.grow_layers:
            draft = grow_layers(draft, base, m.grow_layers, seed=cfg.training.seed)
            console.print(f"modeling.grow_layers: {draft.cfg.num_layers} layers; the new ones start from "
                          f"{draft.grown_from}, output projections at zero (they add nothing until trained)")
    else:
        draft = build_draft(m, base, token_counts(rows.rows, base.vocab_size), seed=cfg.training.seed)
    return draft.to(dtype=resolve_dtype(draft_dtype(m))).train(True)


def _split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train rows, eval rows): a seeded shuffle, the first eval_fraction held out."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = int(len(order) * eval_fraction) if len(order) > 1 else 0
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _check_trainer(trainer, t) -> None:
    """Refuse what HF Trainer would do silently (DataParallel, FSDP / DeepSpeed not enabled); the algorithm's
    notes on the settings; rich progress instead of HF's printer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if trainer.args.n_gpu > 1:
        raise ConfigError(f"HF Trainer would wrap the draft in nn.DataParallel over {trainer.args.n_gpu} GPUs: launch one "
                          "process per GPU with torchrun.")
    for warning in trainer.model.algorithm.training_warnings(t) if trainer.args.should_save else []:
        console.print(f"[yellow]warning:[/] {warning}")
    if (t.fsdp and not trainer.is_fsdp_enabled) or (t.deepspeed and not trainer.is_deepspeed_enabled):
        raise ConfigError(f"HF Trainer did not enable {'FSDP' if t.fsdp else 'DeepSpeed'} "
                          f"(distributed type {trainer.accelerator.distributed_type}): launch with torchrun on GPUs.")
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


def build_trainer(cfg: Config, presets: list[str]):
    """Load base and data, build the draft, and return (trainer, info)."""
    from specforge_het.models.base import BaseModel
    from specforge_het.training.data import Collator, RowsDataset, load_rows
    from specforge_het.training.devices import check_sharding, check_trainer_device
    from specforge_het.training.trainer import DraftTrainer, DraftTrainingModule, RichProgress

    check_consistency(cfg)
    m, t, d = cfg.modeling, cfg.training, cfg.dataset
    plan = device_plan(cfg)  # resolved once: the base, the draft and HF Trainer all use plan.device
    check_sharding(t.fsdp, t.deepspeed, plan)
    if plan.local_rank in (None, 0):
        for warning in plan.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
    if draft_dtype(m) != m.dtype and not use_bf16(cfg, plan.device):
        raise ConfigError(f"modeling.draft_dtype {m.draft_dtype} differs from the base's modeling.dtype {m.dtype}: the draft "
                          "reads the base's tensors, so this needs bfloat16 autocast. Add --training.precision bf16, "
                          "or drop --modeling.draft_dtype.")
    base = BaseModel.from_config(m, device=plan.device)  # device_map / max_memory may shard it over the GPUs
    rows = load_rows(d, base)
    offline = t.mode == "offline"
    if offline and rows.features is None:
        raise ConfigError(f"--training.mode offline needs stored features, but '{d.path}' has none: run gen_dataset with "
                          "--dataset_generation.store_features, or train online.")
    if offline and rows.hidden_size and rows.hidden_size % base.hidden_size:
        raise ConfigError(f"stored features have width {rows.hidden_size}; base width is {base.hidden_size}: wrong base.")
    algo, options = algorithm_options(cfg)
    if algo.uses_draft_folder:
        module = DraftTrainingModule(_new_draft(cfg, base, rows), base, t, rows.stored_layers if offline else None, options)
    else:  # the algorithm builds what it trains (e.g. a whole HF LM) behind the same module interface
        module = algo.training_module(cfg, base, rows, options)
    train_rows, eval_rows = _split_rows(rows.rows, d.eval_fraction, t.seed)
    if base.sharded:  # HF Trainer and accelerate read this: model parallel, no DataParallel, no move to cuda:0
        module.hf_device_map = dict(base.model.hf_device_map)
    args = training_arguments(cfg, bool(eval_rows), plan)
    check_trainer_device(plan, args.device, args.n_gpu)
    pad = base.tokenizer.pad_token_id if base.tokenizer is not None and base.tokenizer.pad_token_id is not None else 0
    trainer = DraftTrainer(
        model=module, args=args,
        train_dataset=RowsDataset(train_rows, d.max_length),
        eval_dataset=RowsDataset(eval_rows, d.max_length) if eval_rows else None,
        data_collator=Collator(pad, rows.features if offline else None), callbacks=[RichProgress()],
        run_config={**cfg.to_dict(), "description": f"resolved from presets {presets}"},
        provenance_extra={"presets": presets, "dataset": d.path, "mode": t.mode},
    )
    _check_trainer(trainer, t)
    return trainer, {"train_rows": len(train_rows), "eval_rows": len(eval_rows), "kind": rows.kind}


def _resume_arg(value: str):
    if not value:
        return None
    return True if value == "last" else value


def throughput_line(trainer) -> str:
    """Trained tokens per second: non-padding sequence tokens, each taken through every unroll step
    (loss tokens: the assistant tokens among them that carry a loss); evaluation time excluded."""
    tp = trainer.throughput
    secs = tp["seconds"] or 1e-9
    return (f"throughput: {tp['seq_tokens'] / secs:.1f} trained tokens/s ({tp['loss_tokens'] / secs:.1f} loss tokens/s) "
            f"over {tp['seconds']:.0f} s of training, precision {'bf16' if trainer.args.bf16 else 'fp32'}")


def report(trainer, info: dict, seconds: float) -> Table:
    table = Table(title=f"training done in {seconds:.0f} s · {info['train_rows']} train / {info['eval_rows']} eval rows")
    for col in ("step", "loss", "sim τ (train)", "eval loss", "sim τ (eval)"):
        table.add_column(col)
    rows: dict[int, dict] = {}
    for entry in trainer.state.log_history:  # one row per step: train and eval figures side by side
        if "loss" in entry or "eval_loss" in entry:
            rows.setdefault(entry.get("step", 0), {}).update(entry)
    keys = ("loss", "train_sim_accept_length", "eval_loss", "eval_sim_accept_length")
    for step, entry in sorted(rows.items()):
        table.add_row(str(step), *(f"{entry[k]:.4f}" if isinstance(entry.get(k), (int, float)) else "" for k in keys))
    return table


def main(cfg: Config, presets: list[str]) -> None:
    """Train a draft; the final draft folder is --training.output_dir (checkpoints in checkpoint-N/)."""
    start = time.time()
    trainer, info = build_trainer(cfg, presets)
    out = Path(cfg.training.output_dir)
    if trainer.args.should_save:
        save_json_config(cfg, out, presets)
    trainer.train(resume_from_checkpoint=_resume_arg(cfg.training.resume_from_checkpoint))
    step = trainer.state.global_step
    if trainer.eval_dataset is not None and not any(
            "eval_loss" in e and e.get("step") == step for e in trainer.state.log_history):
        trainer.evaluate()
    trainer.provenance_extra["training_seconds"] = round(time.time() - start, 1)
    tp = trainer.throughput
    if tp["seconds"]:
        trainer.provenance_extra["trained_tokens_per_s"] = round(tp["seq_tokens"] / tp["seconds"], 1)
    trainer.save_model(str(out))
    if trainer.args.should_save:
        (out / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        Console().print(report(trainer, info, time.time() - start))
        console.print(throughput_line(trainer))
        console.print(f"draft folder: {out} (load with {trainer.model.algorithm.load_option} {out})")
    _end_distributed()


def _end_distributed() -> None:
    """Tear down the process group torchrun's ranks joined: left to interpreter exit, gloo's threads can abort a
    rank that has already saved ("terminate called without an active exception"), failing the whole run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main, "specforge_het.train")
