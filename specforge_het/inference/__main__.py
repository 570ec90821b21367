"""`python -m specforge_het.inference`: the built-in speculative decoder, with a base-only comparison.

    python -m specforge_het.inference --@smollm2 --@eagle_v3 --modeling.draft_path DRAFT \\
        --inference.compare --mtbench mtbench:3
    python -m specforge_het.inference --@gemma3_smollm2_standalone --inference.compare --mtbench mtbench:1
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from specforge_het.algorithms import get_algorithm
from specforge_het.algorithms.registry import options_of
from specforge_het.cli import run_cli
from specforge_het.config import Config, save_json_config
from specforge_het.inference.fast_paths import FastPaths
from specforge_het.inference.lookup import LookupProposer, check_lookup_config
from specforge_het.inference.prompts import Conversation, load_conversations
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.inference.report import append_json, device_info, print_report
from specforge_het.inference.runner import BASE, SPEC, explain_differences, run_all, summarise

console = Console(stderr=True)


def load_pair(cfg: Config, need_draft: bool):
    """Base (frozen) and, when needed, the draft: a trained folder, or an untrained one from the config."""
    from specforge_het.algorithms.build import build_draft
    from specforge_het.algorithms.io import load_draft
    from specforge_het.models.base import BaseModel

    m = cfg.modeling
    if not m.base_model:
        raise SystemExit("no base model: give a preset (e.g. --@smollm2) or --modeling.base_model PATH")
    base = BaseModel.from_config(m)  # --modeling.device_map / max_memory may shard it (models/placement.py)
    draft = None
    if need_draft:
        if m.draft_path:
            draft = load_draft(m.draft_path, base)
        else:
            console.print("[yellow]no --modeling.draft_path: using an UNTRAINED draft built from the config "
                          "(outputs stay identical; expect accept length τ ≈ 1)[/]")
            draft = build_draft(m, base)
        draft.train(False)  # inference mode (no dropout)
    return base, draft


def make_proposer(cfg: Config, base, draft, spec: TreeSpec):
    """The draft folder's DraftProposer, or the algorithm's own proposer when it has no draft folder
    (standalone: the draft LM named in its config section; it samples from q at the decoder's temperature)."""
    if draft is not None:
        return DraftProposer(draft, spec)
    inf, algo = cfg.inference, get_algorithm(cfg.modeling.algorithm)
    generator = None
    if inf.temperature > 0:
        generator = torch.Generator(device=base.device).manual_seed(inf.seed + 1)  # the draft's own draws
    return algo.proposer(base, options_of(cfg, algo.name), spec, inf.temperature, generator)


def gather_prompts(prompt: str | None, mtbench: str | None, prompts: str | None) -> list[Conversation]:
    given = [x for x in (prompt, mtbench, prompts) if x]
    if len(given) != 1:
        raise SystemExit("give exactly one of --prompt TEXT, --mtbench FILE[:N] or --prompts FILE.jsonl[:N]")
    if prompt:
        return [Conversation("prompt", [str(prompt)])]
    return load_conversations(str(mtbench or prompts))


def main(cfg: Config, presets: list[str], prompt: str | None = None, mtbench: str | None = None,
         prompts: str | None = None, outfile: str | None = None) -> None:
    """Decode prompts speculatively, base-only (--inference.target_model_only), or both (--inference.compare).

    Args:
        prompt: one user prompt.
        mtbench: MT-Bench question.jsonl, optionally FILE:N for the first N questions ('mtbench' = shipped copy).
        prompts: a JSONL of prompts ('prompt'/'question'/'text' or 'turns'), optionally FILE:N.
        outfile: append one JSON line with config, per-turn figures and device.
    """
    inf = cfg.inference
    check_lookup_config(inf)
    conversations = gather_prompts(prompt, mtbench, prompts)
    if inf.compare and inf.target_model_only:
        raise SystemExit("--inference.compare and --inference.target_model_only exclude each other")
    modes = [BASE, SPEC] if inf.compare else [BASE] if inf.target_model_only else [SPEC]
    base, draft = load_pair(cfg, SPEC in modes and get_algorithm(cfg.modeling.algorithm).uses_draft_folder)
    fast = FastPaths.resolve(inf.fast_paths, base.device)
    console.print(f"fast paths: {fast.describe()} (--inference.fast_paths auto|off)")
    tree = "auto" if inf.tree == "auto" else f"{inf.tree} (depth {inf.max_depth}, top_k {inf.top_k}, tokens {inf.total_tokens})"
    decision = None
    if inf.tree == "auto" and draft is not None:  # cost-model tree sizing (specforge_het/inference/auto_tree.py)
        from specforge_het.inference.auto_tree import choose_tree

        decision = choose_tree(base, draft, inf, cfg.modeling.draft_path, Console(),
                               lookup_tokens=inf.lookup_tokens)
        tree = f"auto → {decision.chosen.shape.describe()}"
    spec = decision.tree_spec if decision is not None else TreeSpec.from_config(inf)
    proposer = make_proposer(cfg, base, draft, spec) if SPEC in modes else None
    if proposer is not None and inf.lookup_tokens > 0:  # prompt-lookup branch (inference/lookup.py)
        proposer = LookupProposer(proposer, inf.lookup_tokens, inf.lookup_ngram, base.device)
        tree += f" + lookup {inf.lookup_tokens} (n-gram ≤ {inf.lookup_ngram})"
    records = run_all(base, proposer, conversations, inf, modes)
    explain_differences(base, records)  # after timing: near-tie flip or real mismatch, per differing turn
    summary = summarise(records)
    summary["fast_paths"] = fast.to_json()
    if decision is not None:
        summary["tree_auto"] = decision.to_json()
    info = device_info(base.device, base.dtype)
    if "identical" in summary:  # compare mode: the precision the outputs were compared in
        summary["dtype"] = info["dtype"]
    prompts_by_turn = {(c.id, k): t for c in conversations for k, t in enumerate(c.turns)}
    print_report(records, summary, info, prompts_by_turn, tree, fast.describe())
    if outfile:
        append_json(outfile, cfg.to_dict(), presets, records, summary, info)
        saved = save_json_config(cfg, Path(outfile).parent, presets)
        console.print(f"appended results to {outfile}; resolved config in {saved}")


if __name__ == "__main__":
    run_cli(main, "specforge_het.inference")
