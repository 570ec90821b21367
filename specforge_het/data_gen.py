"""`python -m specforge_het.data_gen <verb>`: make, check and look at training data.

    prepare_data SRC OUT [--kind auto]            sources (ShareGPT, role/content, turns, GSM8K, prompt) -> our schema
    gen_dataset PROMPTS.jsonl                      the base answers every user turn -> dataset folder
    merge_datasets DEST SRC [SRC ...]              merge the folders of several ds_range runs [--ds_range A,B: whole parts]
    probe_datasets PATH [PATH ...]                 rows, tokens, loss-masked share, lengths, storage
    view PATH --index I [J ...]                    samples with loss-masked tokens in green, the rest in red
    gen_prompts OUT.jsonl --n N                    a chat model writes its own user prompts (Magpie-style), filtered
    gen_followups OUT.jsonl DIR --n N              a chat model writes second user turns for answered conversations
    mix_prompts OUT.jsonl SRC[:N] [SRC ...]        prompt files -> one deduplicated, eval-filtered, shuffled file
    check_prompts FILE                             prompts that overlap an evaluation set (MT-Bench, GSM8K test)
    add_features DIR                               store base features in a dataset folder (for offline training)
    bench_gen [--n 128 --max_new 256]              generated tokens/s: continuous engine vs HF generate, per dtype and batch
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from specforge_het.cli import run_cli
from specforge_het.config import Config, save_json_config
from specforge_het.data.followups import gen_followups
from specforge_het.data.gen_bench import bench_gen
from specforge_het.data.inspect import probe_datasets, view
from specforge_het.data.magpie import gen_prompts
from specforge_het.data.prompt_mix import PromptsOverlapError, check_prompts, mix_prompts
from specforge_het.data.sources import prepare_data

console = Console(stderr=True)
_INT = re.compile(r"^-?\d+(,-?\d+)*,?$")


def index_argv(argv: list[str]) -> list[str]:
    """`--index 1 2 3` (or `--index=1,2`) -> `--index=[1,2,3]`: fire would keep only the first number."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--index" or arg.startswith("--index="):
            values = [arg.split("=", 1)[1]] if "=" in arg else []
            while i + 1 < len(argv) and _INT.match(argv[i + 1]):
                values.append(argv[i + 1])
                i += 1
            numbers = [v for text in values for v in text.strip("[]").split(",") if v.strip()]
            out.append(f"--index=[{','.join(numbers)}]")
        else:
            out.append(arg)
        i += 1
    return out


def gen_dataset(cfg: Config, presets: list[str], prompts: str = "") -> str:
    """The base answers every user turn of PROMPTS (conversations JSONL); writes --dataset_generation.output_dir."""
    from specforge_het.data.generate import gen_dataset as run

    return str(run(cfg, presets, prompts))


def _range_arg(value) -> tuple[int, int] | None:
    """--ds_range START,END as fire hands it over (a tuple, or a string), parsed as gen_dataset's ds_range."""
    if value is None or not str(value).strip():
        return None
    from specforge_het.data.generate import parse_range

    spec = ",".join(str(x) for x in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        return parse_range(spec, sys.maxsize)
    except ValueError:
        raise SystemExit(f"--ds_range {value!r}: give START,END (two integers, 0 <= START < END, END exclusive), "
                         "e.g. 0,1024") from None


def merge_datasets(cfg: Config, presets: list[str], dest: str, *srcs: str, allow_gaps: bool = False,
                   ds_range=None) -> str:
    """Merge dataset folders SRC... (e.g. several ds_range runs) into the new folder DEST.

    Refuses duplicated ids, missing indices (unless --allow_gaps) and sources made with another
    base, tokenizer, feature layers or feature dtype. --ds_range START,END: only the committed parts
    whose conversations lie in [START, END) (a part across a bound is refused: parts are merged whole).
    """
    from specforge_het.data.merge import merge_dirs
    from specforge_het.data.store import DatasetDirError

    if not srcs:
        raise SystemExit("merge_datasets needs DEST and at least one SRC folder")
    try:
        counts = merge_dirs(dest, [str(s) for s in srcs], allow_gaps=allow_gaps, ds_range=_range_arg(ds_range))
    except DatasetDirError as e:
        console.print(f"[bold red]merge refused:[/] {e}")
        raise SystemExit(2) from None
    table = Table(title=f"merged into {dest}")
    for col in ("source", "ds_range", "rows", "skipped", "tokens"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for c in counts:
        rng = c["ds_range"]
        table.add_row(c["source"], f"{rng.start},{rng.stop}", str(c["rows"]), str(c["skipped"]), str(c["tokens"]))
    table.add_row("[bold]total", "", *(str(sum(c[k] for c in counts)) for k in ("rows", "skipped", "tokens")))
    console.print(table)
    save_json_config(cfg, Path(dest), presets)
    return str(dest)


def add_features(cfg: Config, presets: list[str], path: str) -> str:
    """Store base features for every committed part of the dataset folder PATH (resumable; for offline training)."""
    from specforge_het.data.add_features import add_features as run

    return run(cfg, presets, path)


def _without_console(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with its `console` parameter (for tests and library callers) hidden from the command line."""

    @functools.wraps(fn)
    def verb(*args, **kwargs):
        return fn(*args, **kwargs)

    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "console"]
    verb.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return verb


VERBS: dict[str, Callable[..., Any]] = {"prepare_data": _without_console(prepare_data), "gen_dataset": gen_dataset,
         "merge_datasets": merge_datasets, "probe_datasets": _without_console(probe_datasets),
         "view": _without_console(view), "gen_prompts": gen_prompts, "gen_followups": gen_followups,
         "mix_prompts": mix_prompts, "check_prompts": check_prompts, "bench_gen": bench_gen,
         "add_features": add_features}


def main(argv: list[str] | None = None) -> None:
    argv = index_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        run_cli(VERBS, "specforge_het.data_gen", argv)
    except PromptsOverlapError as e:  # check_prompts: the table above lists them
        console.print(f"[bold red]{e}[/]")
        raise SystemExit(1) from None
    except (ValueError, FileNotFoundError) as e:  # our errors name the problem and the fix
        console.print(f"[bold red]error:[/] {e}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
