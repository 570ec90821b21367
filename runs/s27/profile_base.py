"""Session 27: where a base-only SmolLM2 decoding step's time goes (torch.profiler, fast paths auto), with the
fused projections (models/fused.py) off and on. A random 300-token prompt, 32 new tokens after a warm-up.
Prints tokens/s and the profiler's table by operator and input shape (the prefill's rows are the 300-row shapes).
    .venv/bin/python runs/s27/profile_base.py > runs/s27/profile_base.log
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from specforge_het.inference.decoder import Decoder
from specforge_het.models import fused
from specforge_het.models.base import BaseModel

base = BaseModel.load("smollm2-135m-instruct")
ids = torch.randint(100, 20000, (1, 300), generator=torch.Generator().manual_seed(0))
dec = Decoder(base)
for on in (False, True):
    fused.ENABLED = on
    dec.generate(ids, 16)
    r = dec.generate(ids, 64)
    print(f"fused {on}: {len(r.tokens) / r.decode_s:.2f} tok/s, {1e3 * r.decode_s / len(r.tokens):.1f} ms per token")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        dec.generate(ids, 32)
    print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=14,
                                                           max_name_column_width=40, max_shapes_column_width=48))
