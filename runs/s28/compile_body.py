"""Session 28 prototype: the base's 30 layers as ONE inductor graph with frozen weights (max-autotune, C++
GEMM template), KV cache buffers written in place, attention inside; vs the eager fused path.
    .venv/bin/python runs/s28/compile_body.py [MAX_NEW]"""
import sys, time, warnings
import torch
import torch.nn.functional as F
import torch._inductor.config as icfg
from torch import nn
warnings.filterwarnings("ignore")
from specforge_het.models.base import BaseModel
from specforge_het.models import lean, fused
from specforge_het.models.cache import KVCache
from specforge_het.inference.decoder import Decoder
import specforge_het.models.base as bm

icfg.freezing = True
icfg.max_autotune = True
icfg.max_autotune_gemm_backends = "CPP,ATEN"
MAX_NEW = int(sys.argv[1]) if len(sys.argv) > 1 else 48
base = BaseModel.load("smollm2-135m-instruct")

class Layer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        a, m = layer.self_attn, layer.mlp
        self.inorm, self.pnorm = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv = fused.fuse([a.q_proj, a.k_proj, a.v_proj]); self.o = fused.fuse([a.o_proj])
        self.gu = fused.fuse([m.gate_proj, m.up_proj]); self.down = fused.fuse([m.down_proj]); self.act = m.act_fn
        self.sizes = [a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features]
        self.ni = m.gate_proj.out_features; self.hd = a.head_dim; self.scaling = a.scaling

class Body(nn.Module):
    def __init__(self, layers):
        super().__init__(); self.layers = nn.ModuleList(Layer(l) for l in layers)
    def forward(self, h, cos, sin, mask, ks, vs, past: int):
        b, s, _ = h.shape
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, L in enumerate(self.layers):
            x = L.inorm(h)
            q, k, v = L.qkv(x).split(L.sizes, -1)
            shape = (b, s, -1, L.hd)
            q = lean._rope(q.view(shape).transpose(1, 2), cos, sin)
            k = lean._rope(k.view(shape).transpose(1, 2), cos, sin)
            v = v.view(shape).transpose(1, 2)
            ks[i][:, :, past:past + s] = k; vs[i][:, :, past:past + s] = v
            out = F.scaled_dot_product_attention(q, ks[i][:, :, :past + s], vs[i][:, :, :past + s], attn_mask=mask,
                                                 scale=L.scaling, enable_gqa=True)
            h = h + L.o(out.transpose(1, 2).reshape(b, s, -1))
            g, u = L.gu(L.pnorm(h)).split([L.ni, L.ni], -1)
            h = h + L.down(L.act(g) * u)
        return h

body = Body(base.layers).eval()
cbody = torch.compile(body, dynamic=True)

def lean_forward(self, input_ids, cache, positions, tree_mask, want, seen=(None, None)):
    past, s = cache.length, input_ids.shape[1]
    if s > 16:
        return ORIG(self, input_ids, cache, positions, tree_mask, want, seen)
    h = self.body.embed_tokens(input_ids)
    cos, sin = self._rotary(h, positions[None], "full_attention")
    mask = lean.attend_mask(positions, past, tree_mask, None, *seen)
    if mask is None:
        mask = torch.ones(1, 1, s, past + s, dtype=torch.bool)
    for i in range(len(self.layers)):  # ensure capacity (writes of the eager path)
        if cache.k[i].shape[2] < past + s:
            raise RuntimeError("grow")
    h = cbody(h, cos, sin, mask, cache.k, cache.v, past)
    cache.advance(s)
    return self.body.norm(h), {}

ORIG = bm.BaseModel._lean_forward
ids = torch.randint(100, 20000, (1, 300), generator=torch.Generator().manual_seed(0))
dec = Decoder(base)
def bench(tag):
    best = 0
    for _ in range(3):
        r = dec.generate(ids, MAX_NEW); best = max(best, len(r.tokens) / r.decode_s)
    print(tag, "tok/s %.2f" % best, flush=True); return r.tokens
a = bench("eager fused")
bm.BaseModel._lean_forward = lean_forward
t = time.time()
with torch.no_grad():
    dec.generate(ids, 8)
print("compile+first s %.1f" % (time.time() - t), flush=True)
for _ in range(2):
    bm.BaseModel._lean_forward = ORIG; a = bench("eager fused")
    bm.BaseModel._lean_forward = lean_forward; b = bench("compiled body")
    print("same tokens", a == b, flush=True)
