"""`python -m specforge_het.export`: draft folder -> serving folder, contract checks, EAGLE imports.

    python -m specforge_het.export DRAFT OUT --format sglang-eagle3|speculators|sglang-eagle|eagle [--dtype bfloat16]
                                   [--verifier HUB_ID_OR_FOLDER] [--force]
    python -m specforge_het.export check OUT --format FORMAT
    python -m specforge_het.export import_eagle SRC OUT --@smollm2          # original EAGLE-1/2 checkpoint -> draft folder
    python -m specforge_het.export import_folder SRC OUT --format FORMAT --@smollm2   # engine folder -> draft folder

DRAFT is a draft folder or a shipped draft name. The base defaults to the one the draft's
config.json names; `--@preset` or `--modeling.base_model` overrides it. `--verifier` names the base
as the engine loads it (a Hub id or a folder; default: the base's name, or for an embedded alias its
original Hub id); `--force` writes folders that only some engine versions accept.
"""

from __future__ import annotations

import sys
import warnings

from rich.console import Console

from specforge_het.cli import run_cli
from specforge_het.config import Config
from specforge_het.export import (
    FORMATS,
    ExportError,
    ExportOptions,
    ExportWarning,
    check_folder,
    export_draft,
    import_folder,
)
from specforge_het.export.common import read_folder, verifier_name

console = Console(stderr=True, soft_wrap=True)
VERBS = ("export", "check", "import_eagle", "import_folder")
SERVE_HINT = {
    "sglang-eagle3": "python -m sglang.launch_server --model-path {base} --speculative-algorithm EAGLE3 "
                     "--speculative-draft-model-path {out} --speculative-num-steps 3 --speculative-eagle-topk 1 "
                     "--speculative-num-draft-tokens 4",
    "sglang-eagle": "python -m sglang.launch_server --model-path {base} --speculative-algorithm EAGLE "
                    "--speculative-draft-model-path {out} --speculative-num-steps 3 --speculative-eagle-topk 1 "
                    "--speculative-num-draft-tokens 4",
    "speculators": "vllm serve {out}   (vLLM loads the verifier named in config.json, {base}, as the target)",
    # SafeAILab/EAGLE (GitHub) defaults to EAGLE-3 weights: EAGLE-1/2 weights need use_eagle3=False (its MT-bench
    # scripts: leave out --use_eagle3). eagle-llm 1.2.1 on PyPI predates that argument.
    "eagle": "with SafeAILab/EAGLE from GitHub: EaModel.from_pretrained(base_model_path='{base}', ea_model_path='{out}', "
             "use_eagle3=False, total_token=-1), or on MT-bench: python -m eagle.evaluation.gen_ea_answer_llama3chat "
             "--ea-model-path {out} --base-model-path {base}   (no --use_eagle3; eagle-llm 1.2.1 from PyPI: leave out "
             "use_eagle3)",
}
UNKNOWN_BASE = "<the base's Hub id or folder>"


def _fail(msg: str) -> None:
    console.print(f"[bold red]export error:[/] {msg}")
    raise SystemExit(2)


def _base(cfg: Config, default: str = ""):
    from specforge_het.models.base import BaseModel

    name = cfg.modeling.base_model or default
    if not name:
        _fail("no base model: give a preset (e.g. --@smollm2) or --modeling.base_model PATH")
    return BaseModel.load(name, cfg.modeling.dtype, cfg.modeling.device, cfg.modeling.attn_implementation)


def _dtype(name: str, draft_folder=None):
    import torch
    from safetensors import safe_open

    if name:
        if name not in ("float32", "bfloat16", "float16"):
            _fail(f"--dtype {name!r}: use float32, bfloat16 or float16")
        return getattr(torch, name)
    if draft_folder is None:
        return None
    with safe_open(str(draft_folder / "model.safetensors"), "pt") as f:  # keep the draft folder's float dtype
        return f.get_tensor("fc.weight").dtype


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        _fail(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")


def export(cfg: Config, presets: list[str], draft: str, out: str, format: str = "sglang-eagle3", dtype: str = "",
           verifier: str = "", force: bool = False) -> str:
    """Export DRAFT (folder or shipped name) to OUT in --format; the folder is contract-checked.
    --verifier: the base as the engine loads it (Hub id or folder); --force: write a folder only some engine
    versions accept (vLLM's EAGLE-3 model list, eagle-llm's fixed rope theta)."""
    from specforge_het.algorithms.io import load_draft, read_draft_config
    from specforge_het.assets import resolve_draft_path

    _check_format(format)
    folder = resolve_draft_path(str(draft))
    base = _base(cfg, read_draft_config(folder).base.get("name", ""))
    model = load_draft(folder, base).train(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportWarning)
        try:
            path = export_draft(model, out, format, _dtype(dtype, folder), verifier=str(verifier), force=bool(force))
            serve_base = verifier_name(model, ExportOptions(verifier=str(verifier))) or UNKNOWN_BASE
        except ExportError as e:
            _show(caught)
            _fail(str(e))
    _show(caught)
    console.print(f"[green]wrote {format} folder {path}[/] (contract check passed)")
    console.print("serve it with: " + SERVE_HINT[format].format(base=serve_base, out=path))
    return str(path)


def _show(caught: list) -> None:
    """Each warning once (the verifier is resolved for the folder and again for the hint)."""
    for message, category in dict.fromkeys((str(w.message), w.category) for w in caught):
        label = "export warning" if issubclass(category, ExportWarning) else category.__name__
        console.print(f"[bold yellow]{label}:[/] {message}")


def check(cfg: Config, presets: list[str], folder: str, format: str = "sglang-eagle3") -> str:
    """Check FOLDER against --format's contract (every tensor name, shape, dtype and config key)."""
    _check_format(format)
    try:
        problems = check_folder(folder, format)
    except ExportError as e:
        _fail(str(e))
    if problems:
        _fail(f"'{folder}' breaks the {format} contract:\n  - " + "\n  - ".join(problems))
    console.print(f"[green]{folder}: {format} contract OK[/]")
    return "ok"


def _save(draft, out: str, source: str) -> str:
    from specforge_het.algorithms.io import save_draft

    path = save_draft(draft, out, extra_provenance={"imported_from": str(source)})
    console.print(f"[green]wrote draft folder {path}[/] ({draft.cfg.algorithm}, base {draft.cfg.base['name']})")
    return str(path)


def import_eagle(cfg: Config, presets: list[str], src: str, out: str) -> str:
    """Original EAGLE-1/2 checkpoint folder SRC -> our draft folder OUT (needs the base: --@preset)."""
    from specforge_het.export.eagle import import_eagle_checkpoint

    base = _base(cfg)
    try:
        draft = import_eagle_checkpoint(src, base)
    except ExportError as e:
        _fail(str(e))
    return _save(draft, out, src)


def import_folder_verb(cfg: Config, presets: list[str], src: str, out: str, format: str = "sglang-eagle3") -> str:
    """An engine folder SRC in --format -> our draft folder OUT (speculators folders name their base)."""
    _check_format(format)
    try:
        config, _ = read_folder(src)
        verifier = (config.get("speculators_config") or {}).get("verifier", {}).get("name_or_path", "")
        draft = import_folder(src, format, _base(cfg, verifier))
    except ExportError as e:
        _fail(str(e))
    return _save(draft, out, src)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in (*VERBS, "show") for a in argv) and argv[:1] not in (["-h"], ["--help"]):
        argv = ["export", *argv]  # `python -m specforge_het.export DRAFT OUT --format F`
    verbs = {"export": export, "check": check, "import_eagle": import_eagle, "import_folder": import_folder_verb}
    return run_cli(verbs, "python -m specforge_het.export", argv)


if __name__ == "__main__":
    main()
