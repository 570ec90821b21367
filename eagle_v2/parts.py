"""Part-by-part comparisons of our EagleV2 draft with the reference EAGLE code (pure functions).

Each function takes plain tensors (ours, the reference's) and returns a JSON-able dict with an
`equal` / `match` verdict and the numbers behind it, so the runner can print and store them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specforge_het.inference.tree import layout_from_parents


def tensor_diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Shape, dtype and largest absolute difference of two tensors."""
    row = {"shape": list(a.shape), "ref_shape": list(b.shape), "dtype": str(a.dtype).removeprefix("torch."),
           "ref_dtype": str(b.dtype).removeprefix("torch.")}
    if a.shape != b.shape:
        return {**row, "equal": False, "max_abs_diff": None, "problem": "shape differs"}
    diff = (a.double() - b.double()).abs()
    m = float(diff.max()) if diff.numel() else 0.0
    return {**row, "equal": bool(torch.equal(a.to(b.dtype), b)), "max_abs_diff": m}


def compare_weights(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], key_map: dict[str, str],
                    unused: Sequence[str] = (), atol: float = 0.0) -> dict:
    """Tensor-by-tensor: ours[key_map[ref_name]] against ref[ref_name].

    key_map maps reference (EAGLE) names to our names. Our tensors in `unused` (owned but never read
    by the forward pass) are listed, not counted as a mismatch.
    """
    rows, mismatched = {}, []
    for ref_name in sorted(set(key_map) | set(ref)):
        our_name = key_map.get(ref_name)
        if our_name is None or our_name not in ours:
            rows[ref_name] = {"equal": False, "problem": "reference only (no tensor of ours maps to it)"}
        elif ref_name not in ref:
            rows[ref_name] = {"equal": False, "problem": f"ours only ({our_name}); the reference did not load it"}
        else:
            rows[ref_name] = tensor_diff(ours[our_name], ref[ref_name])
            if atol and rows[ref_name]["max_abs_diff"] is not None:
                rows[ref_name]["equal"] = rows[ref_name]["max_abs_diff"] <= atol
        if not rows[ref_name]["equal"]:
            mismatched.append(ref_name)
    mapped = set(key_map.values())
    leftover = sorted(k for k in ours if k not in mapped)
    not_unused = [k for k in leftover if k not in unused]
    return {"equal": not mismatched and not not_unused, "compared": len(rows), "mismatched": mismatched,
            "ours_unmapped": leftover, "ours_unmapped_unexpected": not_unused, "tensors": rows}


def compare_logits(ours: torch.Tensor, ref: torch.Tensor, k: int = 10, atol: float = 1e-4) -> dict:
    """Logits [..., V] of the same positions: max |diff|, top-1 agreement, mean top-k overlap."""
    if ours.shape != ref.shape:
        return {"match": False, "problem": f"shape {list(ours.shape)} != reference {list(ref.shape)}"}
    o, r = ours.reshape(-1, ours.shape[-1]).double(), ref.reshape(-1, ref.shape[-1]).double()
    top1 = (o.argmax(-1) == r.argmax(-1)).double().mean().item()
    k = min(k, o.shape[-1])
    ok, rk = o.topk(k, -1).indices, r.topk(k, -1).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ok, rk)) / (k * o.shape[0])
    diff = float((o - r).abs().max())
    return {"match": diff <= atol, "max_abs_diff": diff, "top1_agreement": top1, f"top{k}_overlap": overlap,
            "positions": o.shape[0], "atol": atol}


def compare_hidden(ours: torch.Tensor, ref: torch.Tensor, atol: float = 1e-4) -> dict:
    if ours.shape != ref.shape:
        return {"match": False, "problem": f"shape {list(ours.shape)} != reference {list(ref.shape)}"}
    diff = (ours.double() - ref.double()).abs()
    scale = float(ref.double().abs().max()) or 1.0
    return {"match": float(diff.max()) <= atol, "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max()) / scale, "atol": atol}


def _path_set(paths: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row if v >= 0) for row in paths}


def compare_static_tree(our_tokens: torch.Tensor, our_parents: torch.Tensor, ref: dict[str, torch.Tensor]) -> dict:
    """Our static draft tree against the reference's tree buffers and candidates.

    ref: tokens [N] (node 0 = root), attn_mask [N, N] (1 = may attend), position_ids [N],
    retrieve_indices [P, D+1] (root->leaf node indices, -1 padded). Both sides order nodes by (depth, path).
    """
    layout = layout_from_parents(our_parents.cpu())
    n_ours, n_ref = int(our_tokens.numel()), int(ref["tokens"].numel())
    out = {"nodes": n_ours, "ref_nodes": n_ref}
    if n_ours != n_ref:
        return {**out, "match": False, "problem": f"{n_ours} nodes vs reference {n_ref}"}
    same_tok = our_tokens.cpu() == ref["tokens"].cpu().to(our_tokens.dtype)
    out["mask_equal"] = bool(torch.equal(layout.attn_mask, ref["attn_mask"].cpu() > 0))
    out["positions_equal"] = bool(torch.equal(layout.position_offsets, ref["position_ids"].cpu().long()))
    out["paths_equal"] = _path_set(layout.paths) == _path_set(ref["retrieve_indices"].cpu())
    out["tokens_equal"] = int(same_tok.sum())
    out["first_token_mismatch"] = None if bool(same_tok.all()) else int((~same_tok).nonzero()[0, 0])
    out["match"] = out["mask_equal"] and out["positions_equal"] and out["paths_equal"] and bool(same_tok.all())
    return out


def truncate_output(tokens: Sequence[int], eos: set[int], max_new_tokens: int) -> list[int]:
    """Cut to max_new_tokens, then after the first EOS: the form in which outputs are compared."""
    out = list(tokens)[:max_new_tokens]
    for i, t in enumerate(out):
        if t in eos:
            return out[: i + 1]
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
