"""Merge our runs and the reference's into one summary, and render it as rich tables (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from eagle_v2.parts import truncate_output

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


def summarise(runs: Sequence[dict], eos: set[int], max_new_tokens: int) -> dict:
    """Per (side, mode): τ, tokens/s, and on how many prompts the output equals every other row's."""
    outs = {(r["side"], r["mode"], r["prompt"]): truncate_output(r["tokens"], eos, max_new_tokens) for r in runs}
    prompts = sorted({r["prompt"] for r in runs})
    rows = {}
    for side, mode in ROWS:
        mine = [r for r in runs if (r["side"], r["mode"]) == (side, mode)]
        if not mine:
            continue
        lengths = [a for r in mine for a in r["accept_lengths"]]
        toks = sum(len(outs[(side, mode, r["prompt"])]) for r in mine)
        secs = sum(r["seconds"] for r in mine)
        equal = {}
        for other in ROWS:
            if other == (side, mode) or not any((r["side"], r["mode"]) == other for r in runs):
                continue
            both = [p for p in prompts if (side, mode, p) in outs and (*other, p) in outs]
            equal[f"{other[0]} {other[1]}"] = [sum(outs[(side, mode, p)] == outs[(*other, p)] for p in both), len(both)]
        rows[f"{side} {mode}"] = {
            "prompts": len(mine), "new_tokens": toks, "seconds": round(secs, 3),
            "tokens_per_s": round(toks / secs, 3) if secs > 0 else None,
            "tau": round(sum(lengths) / len(lengths), 3) if lengths else None, "steps": len(lengths),
            "identical_to": equal,
        }
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
