"""`--inference.tree auto`: measure (or load cached) costs and acceptance, choose the tree shape, report it."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from specforge_het.assets import cache_dir, resolve_draft_path
from specforge_het.errors import ConfigError
from specforge_het.inference import calibrate
from specforge_het.inference.cost_model import (
    Acceptance,
    Candidate,
    Costs,
    acceptance_from_training_log,
    search,
)
from specforge_het.inference.lookup_model import LookupStats
from specforge_het.inference.prompts import load_conversations
from specforge_het.inference.proposer import TreeSpec

SCHEMA = 3  # 2: LM head rows measured apart from the verify forward; 3: few-row linears with measured kernels (models/linears.py)
SHOW = 8  # candidates shown in the report


@dataclass
class Decision:
    chosen: Candidate
    ranked: list[Candidate]
    costs: Costs
    acceptance: Acceptance
    cache_file: Path
    measured_s: float | None  # None: loaded from the cache
    lookup: LookupStats | None = None  # the prompt-lookup branch the shapes were scored with

    @property
    def tree_spec(self) -> TreeSpec:
        s = self.chosen.shape
        return TreeSpec(s.kind, s.max_depth, s.top_k, s.total_tokens)

    def to_json(self) -> dict:
        return {"chosen": self.chosen.to_json(), "candidates": [c.to_json() for c in self.ranked[:SHOW]],
                "costs": self.costs.to_json(), "acceptance": self.acceptance.to_json(),
                "cache_file": str(self.cache_file), "measured_s": self.measured_s,
                "lookup": None if self.lookup is None else self.lookup.to_json()}


# ---------------------------------------------------------------- identity and cache


def draft_identity(draft, draft_path: str) -> dict:
    """What makes two drafts the same for the cache: the weights file's path, size and time, or the config."""
    if draft_path:
        folder = resolve_draft_path(draft_path)
        weights = folder / "model.safetensors"
        st = weights.stat()
        return {"path": str(weights.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"untrained": draft.cfg.to_dict()}


def calibration_prompts(spec: str) -> list[str]:
    """'' = the built-in generic prompts; else a prompt JSONL (FILE[:N]), first turns only."""
    if not spec:
        return list(calibrate.CALIBRATION_PROMPTS)
    return [c.turns[0] for c in load_conversations(spec)]


def prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n\0".join(prompts).encode()).hexdigest()[:16]


def cache_key(base, draft, inf, draft_path: str, prompts: list[str]) -> dict:
    device = base.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    acceptance = {"source": inf.auto_acceptance}
    if inf.auto_acceptance == "training_log":
        st = (resolve_draft_path(draft_path) / "training_log.json").stat()
        acceptance.update(bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    else:
        acceptance.update(prompts=prompts_digest(prompts),
                          answer_tokens=calibrate.ANSWER_TOKENS, chat_template=inf.chat_template,
                          system_prompt=inf.system_prompt)
    key = {"schema": SCHEMA, "device": str(device), "device_name": name, "dtype": str(base.dtype),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "base": base.describe(),
           "draft": draft_identity(draft, draft_path), "context": calibrate.cost_context(base),
           "acceptance": acceptance}
    if inf.fast_paths != "auto":  # costs measured with other fast paths; auto keeps the keys of caches made before the switch
        key["fast_paths"] = inf.fast_paths
    return key


def cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    draft = Path(key["draft"]["path"]).parent.name if "path" in key["draft"] else "untrained"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{key['base']['name']}__{draft}__{key['device']}_"
                  f"{key['dtype'].replace('torch.', '')}_{key['threads']}t")
    return cache_dir() / "cost_model" / f"{slug[-120:]}__{digest}.json"


def training_log_acceptance(draft_path: str) -> Acceptance:
    if not draft_path:
        raise ConfigError("--inference.auto_acceptance training_log needs a trained draft: give --modeling.draft_path")
    folder = resolve_draft_path(draft_path)
    log = folder / "training_log.json"
    if not log.is_file():
        raise ConfigError(f"{log} not found: use --inference.auto_acceptance measure for this draft")
    top_k = 4
    run_config = folder / "run_config.json"
    if run_config.is_file():
        top_k = int(json.loads(run_config.read_text()).get("training", {}).get("top_k_accuracy", top_k))
    return acceptance_from_training_log(json.loads(log.read_text()), top_k, str(log))


# ---------------------------------------------------------------- entry point


def choose_tree(base, draft, inf, draft_path: str = "", console: Console | None = None,
                lookup_tokens: int = 0) -> Decision:
    """Costs and acceptance (cached), every shape scored, the best chosen; tables printed. With `lookup_tokens`
    (the decoder adds the prompt-lookup branch), every shape is scored with the branch merged in."""
    console = console or Console()
    from_log = inf.auto_acceptance == "training_log"
    log_acc = training_log_acceptance(draft_path) if from_log else None  # fails early on a missing log
    prompts = calibration_prompts(inf.auto_prompts) if not from_log or lookup_tokens else []
    key = cache_key(base, draft, inf, draft_path, [] if from_log else prompts)
    path = cache_path(key)
    measured_s, answers = None, None
    if path.is_file() and not inf.auto_remeasure:
        data = json.loads(path.read_text())
        console.print(f"tree auto: cost model from the cache {path} (--inference.auto_remeasure to measure again)")
    else:
        t0 = time.perf_counter()
        with console.status("tree auto: measuring base and draft costs on this device"):
            raw = calibrate.measure_costs(base, draft, fast_paths=inf.fast_paths)
        if log_acc is not None:
            acc = log_acc
        else:
            with console.status("tree auto: measuring the draft's acceptance on calibration prompts"):
                answers = calibrate.base_answers(base, prompts, inf)
                acc = calibrate.measure_acceptance(base, draft, prompts, inf, answers=answers)
        measured_s = round(time.perf_counter() - t0, 2)
        data = {"key": key, "costs": raw.smoothed().to_json(), "raw_costs": raw.to_json(),
                "acceptance": acc.to_json(), "measured_s": measured_s}
        write_cache(path, data)
        console.print(f"tree auto: measured in {measured_s:.1f} s, cached in {path}")
    costs, acc = Costs.from_json(data["costs"]), Acceptance.from_json(data["acceptance"])
    lookup = lookup_stats_for(base, inf, lookup_tokens, prompts, data, path, answers, console) if lookup_tokens else None
    ranked = search(costs, acc, lookup=lookup)
    decision = Decision(ranked[0], ranked, costs, acc, path, measured_s, lookup)
    print_decision(decision, console)
    return decision


def lookup_stats_for(base, inf, lookup_tokens: int, prompts: list[str], data: dict, path: Path,
                     answers: list | None, console: Console) -> LookupStats:
    """The lookup branch's stats for these settings and prompts: from the cache file, else measured on the base's
    answers to the calibration prompts (decoded here when the acceptance did not need them) and added to it."""
    entry = (f"tokens={lookup_tokens},ngram={inf.lookup_ngram},prompts={prompts_digest(prompts)},answer_tokens={calibrate.ANSWER_TOKENS},"
             f"template={inf.chat_template},system={inf.system_prompt}")
    stored = data.setdefault("lookup", {})
    if entry in stored:  # a remeasure (of any run sharing this file) starts it anew: lookup stats are measured again
        return LookupStats.from_json(stored[entry])
    if answers is None:
        with console.status("tree auto: measuring the prompt-lookup branch on calibration prompts"):
            answers = calibrate.base_answers(base, prompts, inf)
    stats = calibrate.measure_lookup(answers, lookup_tokens, inf.lookup_ngram)
    stored[entry] = stats.to_json()
    write_cache(path, data)
    return stats


def write_cache(path: Path, data: dict) -> None:
    """Write the cache file whole: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- report


def cost_table(costs: Costs) -> Table:
    table = Table(title=f"measured costs (ms, made non-decreasing) · base-only step {1e3 * costs.base_step:.1f} ms")
    for col in ("tree tokens N", "verify (layers)", "head rows", "LM head", "top_k", "draft depth 1", "per extra step"):
        table.add_column(col, justify="right")

    def cells(points, i, *more):
        if i >= len(points):
            return ("",) * (2 + len(more))
        return (str(points[i][0]), f"{1e3 * points[i][1]:.1f}", *(f"{1e3 * m[i][1]:.1f}" for m in more))

    for i in range(max(len(costs.verify), len(costs.head), len(costs.draft_fixed))):
        table.add_row(*cells(costs.verify, i), *cells(costs.head, i), *cells(costs.draft_fixed, i, costs.draft_step))
    return table


def acceptance_table(acc: Acceptance) -> Table:
    table = Table(title=f"draft acceptance · {acc.source}")
    for col in ("depth", "rank 0", "ranks 0-3", "ranks 0-7", "positions"):
        table.add_column(col, justify="right")
    for d, row in enumerate(acc.probs, start=1):
        n = str(acc.samples[d - 1]) if d - 1 < len(acc.samples) else ""
        table.add_row(str(d), f"{row[0]:.3f}", f"{sum(row[:4]):.3f}", f"{sum(row[:8]):.3f}", n)
    return table


def candidates_table(ranked: list[Candidate]) -> Table:
    table = Table(title="tree shapes, best predicted tokens/s first")
    for col in ("tree", "E[τ]", "verify ms", "draft ms", "step ms", "pred tok/s", "pred speed-up"):
        table.add_column(col, justify="left" if col == "tree" else "right")
    for i, c in enumerate(ranked[:SHOW]):
        style = "bold green" if i == 0 else None
        table.add_row(c.shape.describe(), f"{c.tau:.3f}", f"{1e3 * c.verify_s:.1f}", f"{1e3 * c.draft_s:.1f}",
                      f"{1e3 * c.step_s:.1f}", f"{c.tokens_per_s:.2f}", f"{c.speedup:.2f}x", style=style)
    return table


def print_decision(decision: Decision, console: Console) -> None:
    console.print(cost_table(decision.costs))
    console.print(acceptance_table(decision.acceptance))
    if decision.lookup is not None:
        lk = decision.lookup
        reach = " ".join(f"{p:.2f}" for p in lk.reach[:4])
        console.print(f"prompt lookup · {lk.source}: proposed at {lk.proposed:.0%} of {lk.positions} positions, "
                      f"{lk.mean_tokens:.1f} tokens on average; P(first 1..4 tokens match) {reach}; "
                      "E[τ] below counts the branch")
    console.print(candidates_table(decision.ranked))
    c = decision.chosen
    console.print(f"[bold]tree auto chose: {c.shape.describe()}[/] · expected τ {c.tau:.2f} · "
                  f"predicted speed-up {c.speedup:.2f}x over base-only")
    if c.speedup < 1:
        console.print("[yellow]the cost model predicts no speed-up on this device for this draft: "
                      "base-only decoding (--inference.target_model_only) would be faster[/]")
