"""The checks of the doctor. Each returns a `Check`: ok True/False, or None where it could not run here
(the reason is in `value`). A failed check names what is wrong; the table shows them all.

  kernels     the SDPA kernel torch picks for every attention call of a prefill, a decode step and a tree
              verification of the base, recorded from the real calls (fails on CUDA if one lands in MATH,
              the quadratic kernel)
  prefill     peak memory of one prefill of `prefill_tokens` (CUDA: allocator peak; CPU: not measured)
  decode      base-only vs speculative step time with a random draft (τ≈1: this is the cost of a step,
              not a speed-up), and whether the outputs are identical (asserted in float32 only)
  syncs       host-device syncs per speculative step (fails above 6)
  train       one training step of the EagleV3 draft with the `gpu` preset (bf16 base, fp32 draft under
              bf16 autocast, gradient checkpointing, 1 x `train_tokens`): loss finite, peak memory
  export      the draft exported as an SGLang EAGLE-3 folder passes the contract check; with sglang
              installed (and CUDA), `engine` loads a small saved base + exported draft in sglang.Engine
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
# Llama-3.1-8B's shape (config.json of meta-llama/Llama-3.1-8B-Instruct), random weights
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(LLAMA_8B, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)
MAX_SYNCS = 6


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not run here (see value)
    value: str
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "value": self.value, "detail": self.detail}


def guarded(name: str, fn, *args) -> list[Check]:
    """Run a check (one Check or a list); an exception (an OOM included) is that check's failure, not the doctor's."""
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - reported, the other checks still run
        return [Check(name, False, f"{type(e).__name__}: {str(e)[:300]}")]
    return out if isinstance(out, list) else [out]


# ---------------------------------------------------------------- models


def build_base(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-weight Llama of `shape` as our BaseModel, built directly on `device` in `dtype` (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from specforge_het.models.base import BaseModel

    cfg = LlamaConfig(**shape, rope_scaling=dict(LLAMA3_ROPE, rope_theta=shape["rope_theta"]), bos_token_id=0,
                      eos_token_id=1, pad_token_id=None)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    if shape["hidden_size"] <= 256:  # toy size: sharper logits, so float32 greedy is far from ties
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.08)
    return BaseModel(model, None, name=f"random Llama ({shape['num_hidden_layers']} x {shape['hidden_size']})")


def modeling_for(base, draft_vocab: int):
    from specforge_het.config import Config

    m = Config().modeling
    m.algorithm, m.draft_vocab_size = "eagle_v3", draft_vocab
    return m


def build_eagle3_draft(base, draft_vocab: int):
    from specforge_het.algorithms.build import build_draft

    return build_draft(modeling_for(base, draft_vocab), base).train(False)


# ---------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """{'peak_gib', 'before_gib'} of the CUDA allocator over the block; CPU: None (not measured)."""
    out: dict = {"peak_gib": None, "before_gib": None}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["before_gib"] = torch.cuda.memory_allocated(device) / 2**30
    yield out
    if device.type == "cuda":
        sync(device)
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["before_gib"] = round(out["before_gib"], 2)


def _backend_name(index: int) -> str:
    from torch.nn.attention import SDPBackend

    return {int(getattr(SDPBackend, n)): n for n in dir(SDPBackend) if n.isupper()}.get(index, "unknown")


@contextlib.contextmanager
def record_sdpa(phase: list[str]) -> Iterator[list[dict]]:
    """Every call of F.scaled_dot_product_attention in the block, with the backend torch picks for it
    (torch._fused_sdp_choice on the real arguments), tagged with the current `phase[0]`."""
    fn = torch.nn.functional.scaled_dot_product_attention
    choice = getattr(torch, "_fused_sdp_choice", None)
    calls: list[dict] = []

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        kernel = "unknown"
        if choice is not None:
            try:
                kernel = _backend_name(int(choice(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                                  enable_gqa=enable_gqa)))
            except (RuntimeError, TypeError):
                pass
        calls.append({"phase": phase[0], "kernel": kernel, "q": list(q.shape), "k": list(k.shape),
                      "mask": attn_mask is not None, "is_causal": bool(is_causal), "enable_gqa": bool(enable_gqa),
                      "dtype": str(q.dtype).removeprefix("torch.")})
        return fn(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                  enable_gqa=enable_gqa)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = fn


def random_prompt(base, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, base.vocab_size, (1, n), generator=g)


# ---------------------------------------------------------------- checks


def kernel_verdict(calls: list[dict], device_type: str) -> tuple[bool, dict[str, list[str]], int]:
    """(ok, kernels per phase, calls in MATH). On CUDA a call in the math kernel fails: it materialises the
    [heads, q, k] scores (the quadratic memory the lean forward's SDPA plans avoid). Elsewhere: reported only."""
    per_phase: dict[str, list[str]] = {}
    for c in calls:
        kinds = per_phase.setdefault(c["phase"], [])
        if c["kernel"] not in kinds:
            kinds.append(c["kernel"])
    math_calls = sum(c["kernel"] == "MATH" for c in calls)
    return (math_calls == 0 if device_type == "cuda" else True), per_phase, math_calls



def check_kernels_and_prefill(base, prefill_tokens: int) -> list[Check]:
    """One prefill, one decode step and one tree verification of the base, with every SDPA call recorded."""
    from specforge_het.inference.proposer import TreeSpec

    dev = base.device
    ids = random_prompt(base, prefill_tokens).to(dev)
    phase = ["prefill"]
    with record_sdpa(phase) as calls, torch.no_grad():
        cache = base.new_cache(prefill_tokens + 64)
        with peak_memory(dev) as mem:
            sync(dev)
            t0 = time.perf_counter()
            out = base(ids, cache, logits="last")
            sync(dev)
            prefill_s = time.perf_counter() - t0
        phase[0] = "decode"
        base(out.logits[:, -1:].argmax(-1), cache, logits="last")
        phase[0] = "tree verify"
        n = TreeSpec().total_tokens
        # a verification carries a tree mask (any tree; a chain's is lower-triangular), so its calls are masked
        base(ids[:, :n], cache, tree_mask=torch.ones(n, n, dtype=torch.bool, device=dev).tril(), logits="all")
    ok, per_phase, math_calls = kernel_verdict(calls, dev.type)
    kernels = Check("kernels", ok, "; ".join(f"{p}: {'/'.join(k)}" for p, k in per_phase.items()),
                    {"per_phase": per_phase, "calls": len(calls), "math_calls": math_calls,
                     "examples": {p: next(c for c in calls if c["phase"] == p) for p in per_phase}})
    tokens_s = prefill_tokens / prefill_s
    value = f"{prefill_tokens} tokens in {prefill_s:.2f} s ({tokens_s:,.0f} tok/s)"
    if mem["peak_gib"] is not None:
        value += f", peak {mem['peak_gib']:.2f} GiB (weights etc. {mem['before_gib']:.2f} GiB)"
    else:
        value += ", peak memory: measured on CUDA only"
    prefill = Check("prefill", True, value, {"tokens": prefill_tokens, "seconds": round(prefill_s, 4), **mem})
    return [kernels, prefill]


def check_decode_and_syncs(base, draft, prompt_tokens: int, new_tokens: int) -> list[Check]:
    from specforge_het.inference.decoder import Decoder
    from specforge_het.inference.proposer import DraftProposer, TreeSpec
    from specforge_het.inference.syncs import step_syncs

    ids = random_prompt(base, prompt_tokens, seed=1)
    plain = Decoder(base, fast_paths="auto")
    spec = Decoder(base, DraftProposer(draft, TreeSpec()), fast_paths="auto")
    plain.generate(ids, 4), spec.generate(ids, 4)  # warm-up (kernels, allocator)
    a, b = plain.generate(ids, new_tokens), spec.generate(ids, new_tokens)
    base_ms, spec_ms = 1000 * a.decode_s / max(a.steps, 1), 1000 * b.decode_s / max(b.steps, 1)
    same = a.tokens == b.tokens
    fp32 = base.dtype == torch.float32
    value = (f"base-only {base_ms:.1f} ms/step, speculative {spec_ms:.1f} ms/step (τ {b.mean_accept_length:.2f}, "
             f"random draft); outputs {'identical' if same else 'differ'}"
             + ("" if fp32 else f" ({str(base.dtype).removeprefix('torch.')}: near-ties may flip)"))
    decode = Check("decode", same if fp32 else True, value,
                   {"base_ms_per_step": round(base_ms, 3), "spec_ms_per_step": round(spec_ms, 3),
                    "tau": round(b.mean_accept_length, 3), "identical": same, "new_tokens": new_tokens,
                    "dtype": str(base.dtype).removeprefix("torch."), "fast_paths": spec.fast.describe()})
    # the device strategy (auto on CUDA; on CPU `auto` picks the per-row head, which reads more, so count `off`)
    strategy = "auto" if base.device.type == "cuda" else "off"
    counted = step_syncs(Decoder(base, DraftProposer(draft, TreeSpec()), fast_paths=strategy), ids, min(new_tokens, 16))
    worst = counted.max_per_step
    syncs = Check("syncs", worst <= MAX_SYNCS, f"at most {worst} per speculative step (limit {MAX_SYNCS}; "
                  f"fast_paths {strategy})", {**counted.to_json(), "fast_paths": strategy})
    return [decode, syncs]


def check_train_step(base, draft_vocab: int, train_tokens: int) -> Check:
    """One optimizer step of an EagleV3 draft with the `gpu` preset's training settings."""
    from specforge_het.algorithms.build import build_draft
    from specforge_het.config import Config, apply_preset, load_presets
    from specforge_het.models.base import resolve_dtype
    from specforge_het.training.trainer import DraftTrainingModule

    cfg = Config()
    presets = load_presets()
    for name in ("eagle_v3", "gpu"):
        apply_preset(cfg, name, presets)
    m, t = cfg.modeling, cfg.training
    m.draft_vocab_size = draft_vocab
    dev = base.device
    draft = build_draft(m, base).to(dtype=resolve_dtype(m.draft_dtype or m.dtype)).train(True)
    module = DraftTrainingModule(draft, base, t)
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-5)
    ids = random_prompt(base, train_tokens, seed=2).to(dev)
    attention = torch.ones_like(ids)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, train_tokens // 4:] = 1  # the answer part
    bf16 = t.precision == "bf16"
    with peak_memory(dev) as mem:
        sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
            out = module(ids, attention, loss_mask)
        loss = out["loss"] / out["count"]
        loss.backward()
        loss = loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        seconds = time.perf_counter() - t0
    finite = math.isfinite(float(loss))
    value = (f"1 x {train_tokens} tokens, {module.options.ttt_steps} unroll steps: loss {float(loss):.3f}, {seconds:.2f} s"
             + (f", peak {mem['peak_gib']:.2f} GiB" if mem["peak_gib"] is not None else ", peak memory: CUDA only"))
    return Check("train", finite, value, {"tokens": train_tokens, "ttt_steps": module.options.ttt_steps, "loss": float(loss),
                                          "seconds": round(seconds, 3), "precision": t.precision,
                                          "draft_dtype": m.draft_dtype, "gradient_checkpointing":
                                              t.gradient_checkpointing, **mem})


def check_export(draft, folder) -> Check:
    from specforge_het.export import check_folder, export_draft

    out = export_draft(draft, folder, "sglang-eagle3", verifier="random-llama-for-doctor")
    problems = check_folder(out, "sglang-eagle3")
    import json

    cfg = json.loads((out / "config.json").read_text())
    return Check("export", not problems, "sglang-eagle3 folder passes the contract" if not problems else
                 "; ".join(problems)[:300], {"folder": str(out), "problems": problems,
                                             "max_position_embeddings": cfg.get("max_position_embeddings"),
                                             "rope_scaling": cfg.get("rope_scaling")})
