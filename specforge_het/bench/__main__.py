"""`python -m specforge_het.bench`: our speculative decoder side by side with the HF peers.

    python -m specforge_het.bench --@smollm2 --@eagle_v3 --@tree_cpu --prompts mtbench:10
    python -m specforge_het.bench --@gemma3_smollm2_het --@tree_cpu --prompts mtbench:10

Every method decodes the same prompt token ids in this process, interleaved per prompt, after a
warm-up; greedy, batch 1, same max_new_tokens and EOS ids. HF peers run on the plain HF model
(checked before each call); ours use the decoder's fast paths (--inference.fast_paths, applied
only while our decoder generates). Writes a table, a JSON file and a PNG.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from rich.console import Console

from specforge_het.bench.loading import load_assistants, load_draft_for
from specforge_het.bench.methods import METHODS, OURS_DRAFTED, build_methods, parse_methods
from specforge_het.bench.plot import plot_summary
from specforge_het.bench.report import header_info, print_report, write_json
from specforge_het.bench.suite import PeakMemory, explain_differences, load_prompts, run_suite
from specforge_het.bench.summary import divergences, mismatches, summarise
from specforge_het.cli import run_cli
from specforge_het.config import Config
from specforge_het.inference.lookup import check_lookup_config

console = Console(stderr=True)
_COMMAND = ["python -m specforge_het.bench"]


def default_outfile(base_model: str) -> Path:
    return Path("runs") / "bench" / f"{Path(base_model.rstrip('/')).name or 'base'}.json"


def main(cfg: Config, presets: list[str], prompts: str = "mtbench:3", methods: str | None = None,
         assistant: str | None = None, universal_assistant: str | None = None, pld_tokens: int = 10,
         outfile: str | None = None) -> None:
    """Benchmark the methods on one prompt set; print a table, write JSON and a PNG plot beside it.

    Args:
        prompts: mtbench[:N] (shipped MT-Bench, both turns) | gsm8k:PATH[:N] (GSM8K test JSONL) | PATH.jsonl[:N].
        methods: comma-separated subset of hf, ours-base, hf-pld, hf-assisted, hf-uag, ours-standalone (our
            decoder with hf-uag's assistant as a standalone draft LM), ours-chain, ours-tree, ours-tree-lookup
            (ours-tree's tree + the lookup branch), ours-auto, ours-lookup, ours-auto-lookup (default: all; hf,
            the reference, always runs); and the
            diagnostic hf-packed (HF generate with our packed linears on; only when named).
        assistant: same-tokenizer assistant for HF assisted generation (embedded name or folder).
        universal_assistant: another-tokenizer assistant for HF universal assisted generation and
            ours-standalone (default for gemma3-270m: smollm2-135m-instruct).
        pld_tokens: prompt_lookup_num_tokens of HF prompt lookup decoding, and the lookup branch of ours
            (ours-lookup, ours-tree-lookup, ours-auto-lookup) unless --inference.lookup_tokens is set.
        outfile: JSON path (default runs/bench/<base>.json); the plot goes beside it as .png.
    """
    from transformers.utils import logging as hf_logging

    from specforge_het.models.base import BaseModel

    hf_logging.set_verbosity_error()  # generate()'s per-call notices would drown the table
    m, inf = cfg.modeling, cfg.inference
    wanted, conversations = _checked_inputs(cfg, methods, prompts)
    base = BaseModel.load(m.base_model, m.dtype, m.device, m.attn_implementation)
    draft, draft_name = None, ""
    if any(w in OURS_DRAFTED for w in wanted):
        draft, draft_name = load_draft_for(m, base)
    helpers = load_assistants(base, m.base_model, "hf-assisted" in wanted,
                              "hf-uag" in wanted or "ours-standalone" in wanted, assistant, universal_assistant)
    runnable, skipped = build_methods(base, draft, inf, wanted, helpers, pld_tokens, draft_name)
    labels = {**METHODS, **{x.name: x.label for x in runnable}}
    memory = PeakMemory(base.device)
    records = run_suite(runnable, conversations, base, inf, memory)
    explain_differences(base, records)  # untimed: near-tie flip or real mismatch, per differing prompt
    summary = summarise(records, [x.name for x in runnable])
    info = header_info(base, draft_name, " ".join(_COMMAND), memory.kind, inf.fast_paths)
    n_prompts = sum(len(c.turns) for c in conversations)
    print_report(info, summary, labels, skipped, {x.name: mismatches(records, x.name) for x in runnable},
                 n_prompts, inf.max_new_tokens, divergent={x.name: divergences(records, x.name) for x in runnable})
    if memory.note:
        console.print(f"[yellow]{memory.note}[/]")
    out = Path(outfile) if outfile else default_outfile(m.base_model)
    config = {"presets": presets, "modeling": cfg.to_dict()["modeling"], "inference": cfg.to_dict()["inference"],
              "prompts": prompts, "pld_tokens": pld_tokens, "method_info": {x.name: x.info for x in runnable if x.info}}
    write_json(out, info, {x.name: x.label for x in runnable}, skipped, summary, records, config)
    _plot(summary, labels, out, f"{info['base']} · {info['device']} · {prompts}")


def _checked_inputs(cfg: Config, methods: str | None, prompts: str) -> tuple[list[str], list]:
    """(the methods asked for, the conversations), or SystemExit with what to fix."""
    m, inf = cfg.modeling, cfg.inference
    if not m.base_model:
        raise SystemExit("no base model: give a preset (e.g. --@smollm2) or --modeling.base_model PATH")
    if inf.temperature > 0:
        raise SystemExit("the bench is greedy only: drop --inference.temperature")
    check_lookup_config(inf)
    try:
        return parse_methods(methods), load_prompts(prompts)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None


def _plot(summary: dict, labels: dict[str, str], out: Path, title: str) -> None:
    try:
        png = plot_summary(summary, labels, out.with_suffix(".png"), title)
        console.print(f"wrote {out} and {png}")
    except ImportError as e:
        console.print(f"wrote {out}; no plot: {e}")


def cli(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    _COMMAND[1:] = [shlex.join(argv)]
    return run_cli(main, "specforge_het.bench", argv=argv)


if __name__ == "__main__":
    cli()
