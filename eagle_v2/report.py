"""Merge our runs and the reference's into one summary (the evaluation harness's records and summary,
inference/harness.py), and render it as rich tables (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from eagle_v2.parts import truncate_output
from specforge_het.inference import harness
from specforge_het.inference.harness import Generation, Record, identical_count

OURS, REF = "ours", "reference"
BASE, SPEC = "base-only", "speculative"
ROWS = ((OURS, BASE), (OURS, SPEC), (REF, BASE), (REF, SPEC))


def run_record(side: str, mode: str, prompt: int, tokens: Sequence[int], accept_lengths: Sequence[int],
               seconds: float) -> dict:
    if side not in (OURS, REF) or mode not in (BASE, SPEC):
        raise ValueError(f"unknown run ({side!r}, {mode!r}); sides {OURS}/{REF}, modes {BASE}/{SPEC}")
    return {"side": side, "mode": mode, "prompt": int(prompt), "tokens": [int(t) for t in tokens],
            "accept_lengths": [int(a) for a in accept_lengths], "seconds": float(seconds)}


def merge_runs(ours: Sequence[dict], ref_response: dict | None) -> list[dict]:
    """Our run records + the reference worker's generate runs, as one list of run records."""
    runs = list(ours)
    gen = ((ref_response or {}).get("results") or {}).get("generate") or {}
    for r in gen.get("runs", []):
        runs.append(run_record(REF, r["mode"], r["prompt"], r["tokens"], r["accept_lengths"], r["seconds"]))
    return runs


def to_records(runs: Sequence[dict], eos: set[int], max_new_tokens: int) -> list[Record]:
    """Run records (both sides) as the evaluation harness's records, method '<side> <mode>', their outputs
    cut to max_new_tokens and at the first EOS (the reference may run past either)."""
    out = []
    for r in runs:
        tokens = truncate_output(r["tokens"], eos, max_new_tokens)
        gen = Generation(tokens, accept_lengths=list(r["accept_lengths"]))
        out.append(Record.of(f"{r['side']} {r['mode']}", str(r["prompt"]), 0, [], gen, r["seconds"]))
    return out


def summarise(runs: Sequence[dict], eos: set[int], max_new_tokens: int) -> dict:
    """Per (side, mode), from the harness's summary: τ, tokens/s, and on how many prompts the output equals
    every other row's."""
    records = to_records(runs, eos, max_new_tokens)
    names = [f"{side} {mode}" for side, mode in ROWS]
    figures = harness.summarise(records, order=names)
    by_key = {name: {r.key: r for r in records if r.method == name} for name in figures}
    rows = {}
    for name, f in figures.items():
        mine = [r for r in records if r.method == name]
        equal = {other: list(identical_count(mine, by_key[other])) for other in figures if other != name}
        rows[name] = {"prompts": f["prompts"], "new_tokens": f["new_tokens"], "seconds": f["seconds"],
                      "tokens_per_s": f["tokens_per_s"], "tau": f["tau"], "steps": sum(r.steps for r in mine),
                      "identical_to": equal}
    return rows


def runs_table(summary: dict, ref_label: str) -> Table:
    cols = [k for k in (f"{s} {m}" for s, m in ROWS) if k in summary]
    table = Table(title="Generation: same prompts, greedy, same max_new_tokens (tokens/s incl. prefill, float32 CPU)")
    for name in ("run", "τ", "tok/s", "new tokens", *[f"= {c}" for c in cols]):
        table.add_column(name, justify="left" if name == "run" else "right")
    for key in cols:
        row = summary[key]
        label = key.replace(REF, ref_label, 1) if key.startswith(REF) else key
        eq = [("—" if c == key else "{}/{}".format(*row["identical_to"].get(c, ["?", "?"]))) for c in cols]
        table.add_row(label, _fmt(row["tau"]), _fmt(row["tokens_per_s"]), str(row["new_tokens"]), *eq)
    return table


def parts_table(parts: dict) -> Table:
    """One row per part comparison: verdict and the numbers behind it."""
    table = Table(title="Parts: identical inputs to our code and the reference code")
    for name in ("part", "verdict", "details"):
        table.add_column(name)
    for name, res in parts.items():
        if "error" in res:
            table.add_row(name, "[yellow]not run[/]", res["error"])
            continue
        ok = res.get("equal", res.get("match"))
        verdict = "[green]same[/]" if ok else "[red]differs[/]"
        table.add_row(name, verdict, part_details(name, res))
    return table


def part_details(name: str, res: dict) -> str:
    if name == "weights":
        bad = ", ".join(res["mismatched"]) or "none"
        extra = f"; ours not exported: {res['ours_unmapped']}" if res["ours_unmapped"] else ""
        worst = max((t.get("max_abs_diff") or 0.0 for t in res["tensors"].values()), default=0.0)
        return f"{res['compared']} tensors, mismatched: {bad}, max |Δ| {worst:.3g}{extra}"
    if name == "static tree":
        if "problem" in res:
            return res["problem"]
        return (f"{res['nodes']} nodes; tokens {res['tokens_equal']}/{res['nodes']}, mask {res['mask_equal']}, "
                f"positions {res['positions_equal']}, root→leaf paths {res['paths_equal']}")
    if "problem" in res:
        return res["problem"]
    bits = [f"max |Δ| {res['max_abs_diff']:.3g}"]
    bits += [f"{k.replace('_', ' ')} {v:.3f}" for k, v in res.items() if k.startswith("top")]
    return ", ".join(bits)


def notes_lines(resp: dict | None, base_rope_theta: float | None) -> list[str]:
    """What the reference environment told us, as plain sentences."""
    if not resp:
        return ["reference not run"]
    env, load, lines = resp.get("env") or {}, resp.get("load") or {}, []
    if env:
        lines.append(f"reference: eagle-llm {env.get('eagle_llm')}, torch {env.get('torch')}, transformers "
                     f"{env.get('transformers')}, CUDA available: {env.get('cuda_available')}")
        sites = env.get("cuda_call_sites") or []
        lines.append(f"CUDA call sites in eagle/model: {len(sites)}" + (" — " + "; ".join(sites) if sites else ""))
        if not env.get("has_dynamic_tree"):
            lines.append("eagle-llm's code has no EAGLE-2 dynamic tree (no total_token/depth/top_k tree): "
                         "trees are compared on EAGLE-1's static mc_sim_7b_63")
    for t in load.get("translations", []):
        lines.append(f"base folder view for transformers 4.36: {t}")
    bases = load.get("base_rotary_bases")
    if bases and base_rope_theta is not None and any(abs(b - base_rope_theta) > 1e-6 for b in bases):
        lines.append(f"reference base rotary base {bases} != the base's rope_theta {base_rope_theta}: eagle-llm's "
                     "modeling_llama_kv ignores rope_theta, so its base model computes other hidden states "
                     "(rerun with --rope_theta_shim to align it)")
    if load.get("rope_theta_shim"):
        lines.append(f"rope_theta shim applied to {load.get('shimmed_rotary_modules')} rotary modules")
    for task, err in (resp.get("errors") or {}).items():
        lines.append(f"reference task '{task}' failed: {err}")
    return lines


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
