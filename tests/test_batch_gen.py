"""The continuous-batching engine of gen_dataset: equal to unbatched HF greedy decoding, rows swapped
in and out, follow-up requests, budgets, seeded sampling, the sampler, dtype choice."""

from __future__ import annotations

import math

import pytest
import torch

from specforge_het.data import batch_gen
from specforge_het.data.batch_gen import BatchGenerator, Request, attention_spans, draw
from specforge_het.models.placement import free_memory
from specforge_het.testing import CORPUS_A


def prompts_of(base, n: int) -> list[list[int]]:
    tok = base.tokenizer
    return [tok(CORPUS_A[i % len(CORPUS_A)] * (1 + i % 3)).input_ids[: 6 + 5 * i] for i in range(n)]


def hf_greedy(base, prompt: list[int], max_new: int, eos: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = base.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_greedy_equals_unbatched_hf_with_rows_swapped(bases, family, monkeypatch) -> None:
    """7 prompts of different lengths through 3 slots, budgets from 3 to 40 tokens (Gemma3's window is 16,
    so long rows attend past it): every row equals HF generate alone, finish reasons included. Attention
    runs in blocks of 2 slots, each as wide as its own longest row (always, whatever they save); the K/V
    buffers grow in steps of 8 entries as the rows get longer."""
    monkeypatch.setattr(batch_gen, "ATTN_ROWS", 2)
    monkeypatch.setattr(batch_gen, "ATTN_SAVING", 1.0)
    monkeypatch.setattr(batch_gen, "KV_GROW_STEP", 8)  # the K/V buffers grow several times while rows decode
    base = bases[family]
    eos = base.tokenizer.eos_token_id
    ps = prompts_of(base, 7)
    budgets = [3 + 6 * i for i in range(7)]
    got = {}
    engine = BatchGenerator(base, 3, [eos], 256)
    engine.run([Request(i, p, b) for i, (p, b) in enumerate(zip(ps, budgets))],
               lambda r: got.__setitem__(r.key, r) or [])
    assert engine.prefills > 1  # slots were refilled while other rows decoded
    widest = max(len(p) + len(got[i].tokens) - 1 for i, p in enumerate(ps))  # entries the last step of a row needs
    assert engine.kv.allocated == 8 * math.ceil(widest / 8)  # grew in steps of 8 with the longest row, not to 256
    for i, (p, b) in enumerate(zip(ps, budgets)):
        want = hf_greedy(base, p, b, eos)
        assert got[i].tokens == want, f"row {i}"
        assert got[i].finish_reason == ("stop" if want[-1] == eos and len(want) <= b else "length")


def test_growing_buffers_give_the_tokens_of_full_length_ones(bases, monkeypatch) -> None:
    """A resumed run starts a part with small buffers where the run it resumes had grown them: the same
    requests through buffers that grow in steps of 8 and through buffers at full length from the start
    give the same tokens. Asking past the capacity, or more memory than is free, says so."""
    base = bases["qwen3"]
    eos = base.tokenizer.eos_token_id
    reqs = [Request(i, p, 10 + 3 * i) for i, p in enumerate(prompts_of(base, 6))]
    monkeypatch.setattr(batch_gen, "KV_GROW_STEP", 8)
    out = []
    for full in (False, True):
        engine, got = BatchGenerator(base, 2, [eos], 128), {}
        if full:
            engine.kv.ensure(128)
        engine.run(reqs, lambda r, got=got: got.__setitem__(r.key, r.tokens) or [])
        out.append((got, engine.kv.allocated))
    assert out[0][0] == out[1][0] and out[0][1] < out[1][1] == 128
    with pytest.raises(ValueError, match="capacity 128"):
        engine.kv.ensure(129)
    assert batch_gen.kv_memory_note(engine.kv, engine.kv.nbytes(128)) is None
    note = batch_gen.kv_memory_note(engine.kv, engine.kv.nbytes(128) - 1)
    assert note and "2 slots x 128 entries" in note and "--dataset_generation.batch_size" in note
    assert isinstance(free_memory("cpu"), int)


def test_attention_spans_widen_only_their_own_block() -> None:
    assert attention_spans([5, 900, 7, 8, 9], rows=2) == [(0, 2, 901), (2, 4, 9), (4, 5, 10)]
    assert attention_spans([3], rows=16) == [(0, 1, 4)]
    assert attention_spans([90, 100, 95, 99, 80], rows=2) == [(0, 5, 101)]  # blocks would save < 20 %: one call
    assert attention_spans(list(range(40)), rows=16) == [(0, 16, 16), (16, 32, 32), (32, 40, 40)]


def test_follow_up_requests_and_capacity(bases) -> None:
    """on_done may queue a next turn; a row stops at the cache capacity with finish_reason 'length'."""
    base = bases["llama"]
    eos = base.tokenizer.eos_token_id
    ps = prompts_of(base, 2)
    seen = []

    def on_done(r):
        seen.append(r.key)
        return [Request(("again", r.key), ps[1] + r.tokens, 4)] if not isinstance(r.key, tuple) else []

    BatchGenerator(base, 2, [eos], 64).run([Request(0, ps[0], 5)], on_done)
    assert seen == [0, ("again", 0)]
    short = {}
    BatchGenerator(base, 2, [], len(ps[0]) + 4).run([Request(0, ps[0], 50)], lambda r: short.__setitem__(0, r) or [])
    assert len(short[0].tokens) == 4 and short[0].finish_reason == "length"
    with pytest.raises(ValueError, match="does not fit the cache"):
        BatchGenerator(base, 2, [], 8).run([Request(0, list(range(1, 9)), 3)], lambda r: [])


def test_sampling_follows_each_rows_generator(bases) -> None:
    base = bases["qwen3"]
    ps = prompts_of(base, 4)

    def run(slots: int, seeds: list[int]) -> dict:
        out = {}
        reqs = [Request(i, p, 12, 1.0, torch.Generator().manual_seed(s), 0.9) for i, (p, s) in enumerate(zip(ps, seeds))]
        BatchGenerator(base, slots, [], 64).run(reqs, lambda r: out.__setitem__(r.key, r.tokens) or [])
        return out

    a, b, c = run(4, [1, 2, 3, 4]), run(2, [1, 2, 3, 4]), run(4, [1, 2, 3, 5])
    assert a == b  # a row's draws do not depend on its neighbours
    assert [a[i] for i in range(3)] == [c[i] for i in range(3)] and a[3] != c[3]  # only row 3's seed changed


def test_draw_matches_the_distribution_and_top_p() -> None:
    """Inverse-CDF draws: frequencies follow probs; top-p keeps the smallest head with mass >= p."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).expand(20000, 4)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draw(probs, u)[:, 0], minlength=4).float() / 20000
    assert torch.allclose(freq, probs[0], atol=0.015)
    kept = torch.bincount(draw(probs, u, top_p=0.8)[:, 0], minlength=4).float() / 20000
    assert kept[2] == 0 and kept[3] == 0 and torch.allclose(kept[:2], torch.tensor([0.625, 0.375]), atol=0.015)


def test_fastest_dtype_amx_or_measured(monkeypatch) -> None:
    """AMX: bfloat16. AVX512-BF16 without AMX: bfloat16 only where it measured clearly faster. Else float32."""
    from specforge_het.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(precision, "bf16_gemm_speedup", lambda: 0.5)  # never asked on AMX
    assert precision.fastest_dtype("cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.fastest_dtype("cpu") == "float32"  # measured slower than float32 on such a host
    monkeypatch.setattr(precision, "bf16_gemm_speedup", lambda: 1.8)
    assert precision.fastest_dtype("cpu") == "bfloat16"  # measured 1.76x faster on another
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f"})
    assert precision.fastest_dtype("cpu") == "float32"  # no bfloat16 instructions: no measurement either


def test_bf16_gemm_speedup_is_measured() -> None:
    from specforge_het.models import precision

    ratio = precision.bf16_gemm_speedup()
    # a positive, finite ratio (emulated bf16 on a host without AVX-512 measured 0.0075 under load), measured once
    assert 0 < ratio < 100 and precision.bf16_gemm_speedup() == ratio




def test_auto_dtype_resumes_with_the_recorded_dtype(monkeypatch, tmp_path) -> None:
    """A resumed gen run with dtype auto keeps what its output dir recorded, whatever this host measures now."""
    import json

    from specforge_het.config import Config
    from specforge_het.data import store
    from specforge_het.data.gen_common import resolved_dtype
    from specforge_het.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    cfg = Config()
    cfg.dataset_generation.output_dir = str(tmp_path)
    assert resolved_dtype(cfg) == "bfloat16"  # a new run: measured / flags
    (tmp_path / store.META).write_text(json.dumps({"format": "specforge_het.dataset", "version": 1, "dtype": "float32"}))
    assert resolved_dtype(cfg) == "float32"  # resuming: the recorded dtype
    cfg.dataset_generation.dtype = "bfloat16"
    assert resolved_dtype(cfg) == "bfloat16"  # an explicit dtype is taken as given (check_resume then refuses a mismatch)


def test_bench_gen_compares_attention_blocks_side_by_side(base_dirs, prompts, tmp_path) -> None:
    """`data_gen bench_gen --attn_rows 2,0`: one row per setting (0 = the engine's default) plus HF generate,
    in one JSON; greedy float32 rows generate the same tokens whatever the attention blocks."""
    import json

    from specforge_het.config import Config
    from specforge_het.data.gen_bench import bench_gen

    cfg = Config()
    cfg.modeling.base_model = base_dirs["llama"]
    out = tmp_path / "gen.json"
    bench_gen(cfg, [], prompts=prompts, n=6, max_new=12, dtypes="float32", batches="4", hf_batches="3",
              attn_rows="2,0", outfile=str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["engine"], r["batch"], r.get("attn_rows")) for r in rows] == [
        ("continuous", 4, 2), ("continuous", 4, batch_gen.ATTN_ROWS), ("hf-generate", 3, None)]
    assert rows[0]["tokens"] == rows[1]["tokens"] == rows[2]["tokens"] > 0
