"""Session 21, on the lent H200: data-generation and training throughput at SmolLM2-135M's shape with random
weights (the real base cannot travel to that machine: its GGUF is 98 MB, the transfer limit 64 MiB).

Random weights rarely write the end token, so every row runs to its budget: tok/s of fixed-length answers.
Prints one JSON line per measurement.
    python runs/s21/gpu_throughput.py [--out FILE]
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from specforge_het.data.gen_bench import run_continuous, run_hf
from specforge_het.doctor.checks import check_train_step
from specforge_het.models.base import BaseModel
from specforge_het.testing import CORPUS_A, make_tokenizer

DEVICE = os.environ.get("TP_DEVICE", "cuda")  # TP_DEVICE=cpu TP_SMOKE=1: a toy run that checks the script
SMOKE = os.environ.get("TP_SMOKE") == "1"
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, rope_theta=100000.0, max_position_embeddings=8192,
               rms_norm_eps=1e-5, tie_word_embeddings=True)


def smollm2_shaped(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(CORPUS_A, 300)
    cfg = LlamaConfig(**SMOLLM2, bos_token_id=0, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if SMOKE:
        cfg.num_hidden_layers, cfg.vocab_size = 2, 2048
    with torch.device(DEVICE):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    return BaseModel(model, tok, name="random SmolLM2-135M shape")


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, *args):
    sync()
    t0 = time.perf_counter()
    out = fn(*args)
    sync()
    return out, time.perf_counter() - t0


def main(out: str = "") -> None:
    rows = []
    base = smollm2_shaped(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 290, (int(n),), generator=g).tolist() for n in torch.randint(40, 200, (1024,), generator=g)]
    if os.environ.get("TP_ONLY") != "train":
        run_continuous(base, prompts[:32], 32, 16, 512)  # warm-up
    plan = ((("continuous", 256, 256, 256), ("hf-generate", 256, 256, 256), ("continuous", 512, 1024, 256))
            if not SMOKE else (("continuous", 4, 8, 8), ("hf-generate", 4, 8, 8)))
    if os.environ.get("TP_ONLY") == "train":
        plan = ()
    for engine, batch, n, new in plan:
        fn = run_continuous if engine == "continuous" else run_hf
        args = (base, prompts[:n], batch, new, 1024) if engine == "continuous" else (base, prompts[:n], batch, new)
        tokens, s = timed(fn, *args)
        rows.append({"what": "generate", "engine": engine, "batch": batch, "prompts": n, "max_new": new,
                     "tokens": tokens, "seconds": round(s, 2), "tok_s": round(tokens / s)})
        print(json.dumps(rows[-1]), flush=True)
    for tokens in (2048, 8192) if not SMOKE else (64,):
        for _ in range(2):  # the first step pays for kernel selection
            check = check_train_step(base, 32000 if not SMOKE else 256, tokens)
        rows.append({"what": "train", "tokens": tokens, "value": check.value, "seconds": check.detail["seconds"],
                     "tok_s": round(tokens / check.detail["seconds"]), "peak_gib": check.detail.get("peak_gib")})
        print(json.dumps(rows[-1]), flush=True)
    if out:
        with open(out, "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:2])
