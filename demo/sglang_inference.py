"""An exported draft in SGLang (offline engine or HTTP server), measured on MT-Bench.

    python demo/sglang_inference.py engine_mode MODEL --draft_model SERVING_FOLDER [--mtbench mtbench:10]
    python demo/sglang_inference.py server_mode MODEL --draft_model SERVING_FOLDER [--port 30000]
    ... --dry_run    print the engine kwargs / server command; needs neither sglang nor a GPU

MODEL is a Hugging Face folder, a Hub id or an embedded name (`smollm2-135m-instruct`, converted
once into a safetensors folder). SERVING_FOLDER is a draft exported for SGLang
(`python -m specforge_het.export DRAFT OUT --format sglang-eagle3`), not a training output folder.
Without --draft_model, engine_mode measures base-only decoding (accept length 1) for the speed-up.
Unknown `--flags` are handed to SGLang unchanged (`--mem_fraction_static 0.7` -> engine kwarg /
`--mem-fraction-static 0.7`). SGLang needs a CUDA GPU: `pip install 'specforge_het[sglang]'`.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from specforge_het.assets import cache_dir, is_embedded, resolve_model_path
from specforge_het.chat import render_text, uses_template, with_system
from specforge_het.inference.harness import Record, summarise
from specforge_het.inference.prompts import SHIPPED_MTBENCH, Conversation, load_conversations

INSTALL = "pip install 'specforge_het[sglang]'"
ALGORITHMS = ("EAGLE", "EAGLE3")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
OUR_DRAFT_FORMAT = "specforge_het.draft"  # algorithms/io.py FORMAT
EXPORT_FORMAT = {"eagle_v3": "sglang-eagle3", "eagle_v2": "sglang-eagle"}
BENCH_SCRIPT = "benchmark/mtbench/bench_sglang_eagle.py"  # in the sglang source repository, not in the wheel
console = Console(stderr=True)


class DemoError(ValueError):
    """Bad input: the message names the problem and the fix."""


# ---------------------------------------------------------------- validation (pure)


def tree_args(num_steps: int | None, eagle_topk: int | None, num_draft_tokens: int | None) -> dict[str, int]:
    """SGLang's draft tree flags: all three or none; returns {} or the three as SGLang field names."""
    given = {"num_steps": num_steps, "eagle_topk": eagle_topk, "num_draft_tokens": num_draft_tokens}
    if all(v is None for v in given.values()):
        return {}
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise DemoError(f"tree flags are all-or-none: also give {', '.join('--' + k for k in missing)} "
                        "(or drop them all to use SGLang's defaults for the draft).")
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DemoError(f"--{key} must be a positive integer, got {value!r}")
    steps, topk, tokens = num_steps, eagle_topk, num_draft_tokens
    if topk == 1 and tokens != steps + 1:
        raise DemoError(f"with --eagle_topk 1 the draft is a chain: --num_draft_tokens must be num_steps + 1 = {steps + 1}, "
                        f"got {tokens} (SGLang would silently change it).")
    most = 1 + topk + (steps - 1) * topk * topk  # root + first level + topk^2 candidates per later step
    if not 2 <= tokens <= most:
        raise DemoError(f"--num_draft_tokens {tokens} is outside 2..{most}, the most a tree of depth {steps} "
                        f"and top-k {topk} can propose.")
    return {"speculative_num_steps": steps, "speculative_eagle_topk": topk, "speculative_num_draft_tokens": tokens}


def _read_config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DemoError(f"{folder}/config.json is not valid JSON ({e.msg}).") from None
    if not isinstance(data, dict):
        raise DemoError(f"{folder}/config.json must hold a JSON object.")
    return data


def serving_algorithm(config: dict) -> str | None:
    """EAGLE3 / EAGLE from an exported folder's `architectures`, None when it is no SGLang EAGLE draft."""
    archs = config.get("architectures") or []
    if any(str(a).endswith("ForCausalLMEagle3") for a in archs):
        return "EAGLE3"
    if any(str(a).endswith("ForCausalLMEagle") for a in archs):
        return "EAGLE"
    return None


def draft_algorithm(draft_model: str, speculative_algorithm: str | None) -> str:
    """Check the draft folder is an SGLang serving folder; return the algorithm (given or read from it)."""
    algo = speculative_algorithm.upper() if speculative_algorithm else None
    if algo is not None and algo not in ALGORITHMS:
        raise DemoError(f"--speculative_algorithm must be one of {', '.join(ALGORITHMS)}, got '{speculative_algorithm}'")
    folder = Path(draft_model)
    if not folder.exists():
        if draft_model.count("/") == 1 and not draft_model.startswith((".", "/", "~")) and algo:
            return algo  # a Hub id: SGLang downloads it (our own commands never do)
        raise DemoError(f"draft '{draft_model}' is not a folder. Give an exported serving folder "
                        "(or a Hub id together with --speculative_algorithm EAGLE|EAGLE3).")
    if not (folder / "config.json").is_file():
        raise DemoError(f"'{folder}' has no config.json: it is not a draft folder.")
    config = _read_config(folder)
    if config.get("format") == OUR_DRAFT_FORMAT:
        fmt = EXPORT_FORMAT.get(str(config.get("algorithm")), "sglang-eagle3")
        raise DemoError(f"'{folder}' is a specforge_het training draft, not an SGLang serving folder. Export it first:\n"
                        f"    python -m specforge_het.export {shlex.quote(str(folder))} OUT --format {fmt}\n"
                        "then pass OUT as --draft_model.")
    found = serving_algorithm(config)
    if found is None:
        raise DemoError(f"'{folder}/config.json' names architectures {config.get('architectures')}: not an SGLang EAGLE draft "
                        "(expected LlamaForCausalLMEagle3 or LlamaForCausalLMEagle). Export the draft with "
                        "`python -m specforge_het.export DRAFT OUT --format sglang-eagle3`.")
    if algo is not None and algo != found:
        raise DemoError(f"--speculative_algorithm {algo} does not match the draft folder, which is an {found} draft "
                        f"({config['architectures'][0]}). Drop the flag or pass {found}.")
    return found


def speculative_args(draft_model: str | None, speculative_algorithm: str | None = None, num_steps: int | None = None,
                     eagle_topk: int | None = None, num_draft_tokens: int | None = None) -> dict[str, Any]:
    """SGLang's speculative fields (ServerArgs names) from our flags; {} for base-only decoding."""
    tree = tree_args(num_steps, eagle_topk, num_draft_tokens)
    if not draft_model:
        if speculative_algorithm or tree:
            raise DemoError("--speculative_algorithm and the tree flags need --draft_model SERVING_FOLDER")
        return {}
    algo = draft_algorithm(draft_model, speculative_algorithm)
    return {"speculative_algorithm": algo, "speculative_draft_model_path": draft_model, **tree}


def check_extra(extra: dict[str, Any], ours: tuple[str, ...]) -> None:
    """Pass-through SGLang flags are fine, but a near miss of one of our own flags is a typo."""
    for key in extra:
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.8)
        if close:
            raise DemoError(f"unknown flag --{key}. Did you mean --{close[0]}? (other unknown flags go to SGLang unchanged)")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise DemoError(f"--dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    return dtype


def model_path(model: str, convert: bool) -> str:
    """An embedded name -> its converted safetensors folder (converted now only when `convert`)."""
    if not is_embedded(model):
        return model
    return resolve_model_path(model) if convert else str(cache_dir() / model)


# ---------------------------------------------------------------- engine kwargs / server command (pure)


def engine_kwargs(model: str, spec: dict[str, Any], dtype: str = "auto", disable_cuda_graph: bool = False,
                  seed: int | None = 0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of `sglang.Engine` (= sglang ServerArgs fields)."""
    kwargs: dict[str, Any] = {"model_path": model, "dtype": dtype, **spec}
    if seed is not None:
        kwargs["random_seed"] = seed
    if disable_cuda_graph:  # sglang 0.5.23: the old `disable_cuda_graph` is deprecated in favour of per-phase switches
        kwargs.update(disable_decode_cuda_graph=True, disable_prefill_cuda_graph=True)
    kwargs.update(extra or {})
    return kwargs


def to_flags(kwargs: dict[str, Any]) -> list[str]:
    """ServerArgs fields -> `launch_server` flags: `--a-b value`; True -> bare flag; False/None -> omitted."""
    out: list[str] = []
    for key, value in kwargs.items():
        if value is None or value is False:
            continue
        out.append("--" + key.replace("_", "-"))
        if value is not True:
            out.append(str(value))
    return out


def server_command(kwargs: dict[str, Any], host: str = "127.0.0.1", port: int = 30000,
                   python: str = sys.executable) -> list[str]:
    return [python, "-m", "sglang.launch_server", *to_flags({**kwargs, "host": host, "port": port})]


def bench_command(host: str = "127.0.0.1", port: int = 30000, num_questions: int = 80, parallel: int = 1) -> list[str]:
    """SGLang's MT-Bench client (run from an sglang source checkout) on our shipped MT-Bench copy."""
    return ["python3", BENCH_SCRIPT, "--question-file", str(SHIPPED_MTBENCH), "--host", host, "--port", str(port),
            "--num-questions", str(num_questions), "--parallel", str(parallel)]


# ---------------------------------------------------------------- prompts and metrics (pure)


def load_questions(mtbench: str) -> list[Conversation]:
    """MT-Bench questions: 'mtbench' (shipped copy), 'mtbench:N', 'FILE' or 'FILE:N' (as the inference CLI)."""
    try:
        return load_conversations(str(mtbench))
    except (FileNotFoundError, ValueError) as e:
        raise DemoError(f"--mtbench {mtbench}: {e}") from None


def chat_input_ids(tokenizer, messages: list[dict], system_prompt: str = "") -> list[int]:
    """Token ids of a conversation ending in a user turn (chat template, or the plain User:/Assistant: layout)."""
    template = uses_template(tokenizer)
    text = render_text(tokenizer, with_system(messages, system_prompt), add_generation_prompt=True, template=template)
    return list(tokenizer(text, add_special_tokens=not template).input_ids)


def request_metrics(meta: dict) -> dict[str, Any]:
    """One request's SGLang meta info -> completion tokens, verify steps, accept length (None without verify)."""
    if "completion_tokens" not in meta:
        raise DemoError(f"SGLang meta info without 'completion_tokens': {sorted(meta)}")
    tokens, verify = int(meta["completion_tokens"]), int(meta.get("spec_verify_ct", 0) or 0)
    return {"completion_tokens": tokens, "spec_verify_ct": verify, "accept_length": tokens / verify if verify else None,
            "finish_reason": meta.get("finish_reason")}


def request_record(method: str, question_id: str, turn: int, prompt_tokens: int, out: dict, seconds: float,
                   speculative: bool) -> Record:
    """One SGLang answer as the evaluation harness's record (inference/harness.py). τ = completion tokens /
    verify steps; base-only: one step per token (τ 1); speculative without any verify step reported: None."""
    m = request_metrics(out["meta_info"])
    tokens = m["completion_tokens"]
    steps = m["spec_verify_ct"] if speculative else tokens
    return Record(method, str(question_id), turn, prompt_tokens, tokens, seconds, committed=tokens, steps=steps,
                  text=out["text"])


# ---------------------------------------------------------------- running (engine duck-typed: a fake one in tests)


def run_engine(engine, tokenizer, conversations: list[Conversation], sampling: dict, batch_size: int = 1,
               system_prompt: str = "", method: str = "sglang", speculative: bool = True) -> list[Record]:
    """Every turn of every conversation; turn k is asked after the model's own answer to turn k-1.

    `batch_size` conversations go to the engine at once (0 = all). A record's seconds are its share of its
    generate call's wall time (tokenisation excluded): its own with batch_size 1; all records' seconds sum
    to the wall time of the generate calls, so overall tokens/s is the engine's throughput.
    """
    size = batch_size if batch_size > 0 else len(conversations)
    records: list[Record] = []
    for start in range(0, len(conversations), size):
        group = conversations[start:start + size]
        history: list[list[dict]] = [[] for _ in group]
        for turn in range(max(len(c.turns) for c in group)):
            live = [i for i, c in enumerate(group) if turn < len(c.turns)]
            for i in live:
                history[i].append({"role": "user", "content": group[i].turns[turn]})
            ids = [chat_input_ids(tokenizer, history[i], system_prompt) for i in live]
            tic = time.perf_counter()
            outs = engine.generate(input_ids=ids, sampling_params=sampling)
            share = (time.perf_counter() - tic) / len(live)
            if len(outs) != len(live):
                raise RuntimeError(f"the engine answered {len(outs)} of {len(live)} requests")
            for j, (i, out) in enumerate(zip(live, outs)):
                history[i].append({"role": "assistant", "content": out["text"]})
                records.append(request_record(method, group[i].id, turn, len(ids[j]), out, share, speculative))
    return records


def report_table(records: list[Record], summary: dict, title: str) -> Table:
    """Per turn and overall: requests, completion tokens, steps and accept length (the harness's τ)."""
    table = Table(title=title)
    for col in ("turn", "requests", "completion tokens", "steps", "accept length"):
        table.add_column(col, justify="right")
    for turn in sorted({r.turn for r in records}):
        rows = [r for r in records if r.turn == turn]
        tok, steps = sum(r.new_tokens for r in rows), sum(r.steps for r in rows)
        table.add_row(str(turn + 1), str(len(rows)), str(tok), str(steps), f"{tok / steps:.2f}" if steps else "-")
    acc = summary["tau"]
    table.add_row("all", str(summary["prompts"]), str(summary["new_tokens"]), str(sum(r.steps for r in records)),
                  f"{acc:.2f}" if acc is not None else "-", style="bold")
    table.caption = (f"throughput {summary['tokens_per_s'] or 0.0:.1f} tok/s over {summary['seconds'] or 0.0:.2f} s; "
                     "accept length = completion tokens / verify steps (base-only: 1 per token)")
    return table


def check_runtime() -> None:
    """sglang importable and a CUDA GPU present, or a clear exit (no traceback)."""
    if importlib.util.find_spec("sglang") is None:
        fail(f"SGLang is not installed. Install the extra on a CUDA machine:\n    {INSTALL}\n"
             "(or use the container: ./docker_utils.sh build sglang). Add --dry_run to see what would run.")
    import torch

    if not torch.cuda.is_available():
        fail(f"SGLang speculative decoding needs a CUDA GPU and none is visible (torch {torch.__version__}). "
             f"Run on a GPU machine with `{INSTALL}`, or add --dry_run to see what would run.")


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise SystemExit(2)


def append_json(outfile: str, line: dict) -> None:
    path = Path(outfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


# ---------------------------------------------------------------- verbs

ENGINE_FLAGS = ("draft_model", "speculative_algorithm", "num_steps", "eagle_topk", "num_draft_tokens", "dtype",
                "disable_cuda_graph", "mtbench", "max_new_tokens", "temperature", "batch_size", "system_prompt",
                "seed", "outfile", "dry_run")
SERVER_FLAGS = ("draft_model", "speculative_algorithm", "num_steps", "eagle_topk", "num_draft_tokens", "dtype",
                "disable_cuda_graph", "host", "port", "seed", "dry_run")


def engine_mode(model: str, draft_model: str | None = None, speculative_algorithm: str | None = None,
                num_steps: int | None = None, eagle_topk: int | None = None, num_draft_tokens: int | None = None,
                dtype: str = "auto", disable_cuda_graph: bool = False, mtbench: str = "mtbench",
                max_new_tokens: int = 512, temperature: float = 0.0, batch_size: int = 1, system_prompt: str = "",
                seed: int = 0, outfile: str | None = None, dry_run: bool = False, **extra: Any) -> None:
    """MT-Bench (both turns) through sglang.Engine: throughput and accept length.

    Args:
        model: base model folder, Hub id or embedded name.
        draft_model: exported SGLang draft folder (none: base-only decoding).
        speculative_algorithm: EAGLE or EAGLE3 (default: read from the draft's config.json).
        num_steps: draft tree depth (SGLang --speculative-num-steps); the three tree flags: all or none.
        eagle_topk: branching per draft step (--speculative-eagle-topk).
        num_draft_tokens: tokens verified per step (--speculative-num-draft-tokens); num_steps + 1 for a chain.
        dtype: auto, half, float16, bfloat16, float or float32.
        disable_cuda_graph: eager decode and prefill (slower; for debugging).
        mtbench: 'mtbench', 'mtbench:N', FILE or FILE:N.
        max_new_tokens: per turn. temperature: 0 = greedy.
        batch_size: conversations sent to the engine at once (0 = all).
        system_prompt: prepended to every conversation.
        outfile: append one JSON line (engine kwargs, summary, per-request figures).
        dry_run: print the engine kwargs and stop (no sglang, no GPU needed).
    """
    try:
        check_extra(extra, ENGINE_FLAGS)
        spec = speculative_args(draft_model, speculative_algorithm, num_steps, eagle_topk, num_draft_tokens)
        conversations = load_questions(mtbench)
        kwargs = engine_kwargs(model_path(model, convert=False), spec, check_dtype(dtype), disable_cuda_graph, seed, extra)
    except DemoError as e:
        fail(str(e))
    sampling = {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature)}
    if dry_run:
        print(json.dumps({"engine_kwargs": kwargs, "sampling_params": sampling, "questions": len(conversations),
                          "turns": sum(len(c.turns) for c in conversations), "batch_size": batch_size}, indent=2))
        return
    check_runtime()
    _run_engine_mode(model, kwargs, conversations, sampling, batch_size, system_prompt, outfile)


def _run_engine_mode(model, kwargs, conversations, sampling, batch_size, system_prompt, outfile) -> dict:
    import sglang
    from transformers import AutoTokenizer

    kwargs["model_path"] = model_path(model, convert=True)
    tokenizer = AutoTokenizer.from_pretrained(kwargs["model_path"])
    engine = sglang.Engine(**kwargs)
    name = kwargs.get("speculative_algorithm", "base only")
    try:
        records = run_engine(engine, tokenizer, conversations, sampling, batch_size, system_prompt,
                             method=f"sglang {name}", speculative="speculative_algorithm" in kwargs)
    finally:
        engine.shutdown()
    summary = summarise(records)[f"sglang {name}"]  # the evaluation harness's summary row (no reference here)
    import torch

    device = {"gpu": torch.cuda.get_device_name(0), "sglang": sglang.__version__, "torch": torch.__version__,
              "python": platform.python_version()}
    Console().print(report_table(records, summary, f"SGLang engine · {name} · {device['gpu']}"))
    if outfile:
        append_json(outfile, {"mode": "engine", "engine_kwargs": kwargs, "sampling_params": sampling,
                              "batch_size": batch_size, "device": device, "summary": summary,
                              "records": [r.to_json() for r in records]})
        console.print(f"appended results to {outfile}")
    return summary


def server_mode(model: str, draft_model: str | None = None, speculative_algorithm: str | None = None,
                num_steps: int | None = None, eagle_topk: int | None = None, num_draft_tokens: int | None = None,
                dtype: str = "auto", disable_cuda_graph: bool = False, host: str = "127.0.0.1", port: int = 30000,
                seed: int = 0, dry_run: bool = False, **extra: Any) -> None:
    """Launch `python -m sglang.launch_server` with the speculative flags built from ours (foreground).

    Unknown flags are appended as SGLang flags (`--mem_fraction_static 0.7` -> `--mem-fraction-static 0.7`).
    Benchmark the running server with SGLang's benchmark/mtbench/bench_sglang_eagle.py (command printed).

    Args:
        model: base model folder, Hub id or embedded name.
        draft_model: exported SGLang draft folder (none: a plain server).
        speculative_algorithm: EAGLE or EAGLE3 (default: read from the draft's config.json).
        num_steps: draft tree depth; with eagle_topk and num_draft_tokens: all three or none.
        eagle_topk: branching per draft step.
        num_draft_tokens: tokens verified per step (num_steps + 1 for a chain).
        host: address to bind (0.0.0.0 inside a container).
        dry_run: print the command and stop (no sglang, no GPU needed).
    """
    try:
        check_extra(extra, SERVER_FLAGS)
        spec = speculative_args(draft_model, speculative_algorithm, num_steps, eagle_topk, num_draft_tokens)
        kwargs = engine_kwargs(model_path(model, convert=False), spec, check_dtype(dtype), disable_cuda_graph, seed, extra)
    except DemoError as e:
        fail(str(e))
    if dry_run:
        print(shlex.join(server_command(kwargs, host, int(port))))
        console.print(f"benchmark it, once up, from an sglang source checkout:\n    {shlex.join(bench_command(host, port))}",
                      soft_wrap=True, markup=False)
        return
    check_runtime()
    kwargs["model_path"] = model_path(model, convert=True)
    cmd = server_command(kwargs, host, int(port))
    print(shlex.join(cmd), flush=True)
    console.print("starting the SGLang server; when it is ready run, from an sglang source checkout:\n"
                  f"    {shlex.join(bench_command(host, port))}", soft_wrap=True, markup=False)
    code = subprocess.run(cmd, check=False).returncode  # fixed argv list, no shell
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    import fire

    fire.Fire({"engine_mode": engine_mode, "server_mode": server_mode}, command=argv, name="sglang_inference.py")


if __name__ == "__main__":
    main()
