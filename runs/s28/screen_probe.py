"""Session 28 probe: how many vocabulary rows an int8 screen of the LM head leaves as candidates for the
exact float32 argmax (rigorous bound), on the base's real final hidden states of greedy answers.
    .venv/bin/python runs/s28/screen_probe.py [BASE] [N]"""
import sys, time, warnings
import torch
warnings.filterwarnings("ignore")
from specforge_het.chat import render
from specforge_het.inference.decoder import Decoder
from specforge_het.inference.prompts import load_conversations
from specforge_het.models.base import BaseModel

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 4
base = BaseModel.load(name)
W = base.lm_head.weight.detach().float()
V, K = W.shape
scale = W.abs().amax(1).clamp_min(1e-12) / 127
q = torch.round(W / scale[:, None]).clamp(-127, 127)
wq = q * scale[:, None]
e = (W - wq).norm(dim=1)
wn, wqn = W.norm(dim=1), wq.norm(dim=1)
qw = torch.quantize_per_channel(W, scale.double(), torch.zeros(V, dtype=torch.long), 0, torch.qint8)
packed = torch.ops.quantized.linear_prepack(qw, None)
convs = load_conversations(f"specforge_het/data/files/heldout_prompts.jsonl:{N}")
dec = Decoder(base)
counts, wrong, ts = [], 0, []
for conv in convs:
    ids = render(base.tokenizer, [{"role": "user", "content": conv.turns[0]}])
    res = dec.generate(ids, 96)
    full = torch.cat([ids[0], torch.tensor(res.tokens)])[None]
    out = base(full, base.new_cache(), logits="none")
    H = out.hidden[0, ids.shape[1] - 1:]
    for x in H:
        x = x[None]
        t0 = time.perf_counter()
        app = torch.ops.quantized.linear_dynamic(x, packed)[0]
        xn = x.norm()
        dx = (x.clamp_min(0).max() - x.clamp_max(0).min()) / 127 * K ** 0.5
        D = xn * e + dx * wqn + 1e-4 * xn * (wn + wqn)
        thr = (app - D).max()
        cand = (app + D >= thr).nonzero()[:, 0]
        exact = torch.nn.functional.linear(x, W[cand])[0]
        pick = cand[exact.argmax()]
        ts.append(time.perf_counter() - t0)
        ref = torch.nn.functional.linear(x, W)[0].argmax()
        wrong += int(pick != ref)
        counts.append(len(cand))
c = torch.tensor(counts).float()
print(f"{name}: V={V} positions={len(counts)} candidates median {c.median():.0f} mean {c.mean():.1f} p95 "
      f"{c.quantile(.95):.0f} max {c.max():.0f}; argmax mismatches {wrong}; screen ms median "
      f"{1e3*torch.tensor(ts).median():.2f}")
