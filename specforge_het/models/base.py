"""Base model wrapper: any Hugging Face causal LM, frozen.

It exposes what speculative decoding and draft training need: the token embedding,
features at chosen layers, the final norm + LM head, and a KV cache that keeps every
entry (so tree verification can roll back even past Gemma3's sliding window).

Feature layer ids follow HF's `hidden_states` indexing: 0 = embeddings, i = output of
decoder block i-1, and -1 = the final normed hidden state (what the LM head reads).

A base loaded with `--modeling.device_map` over several devices is *sharded* (models/placement.py):
it runs HF's own forward (whose accelerate hooks move activations between layer devices), and
every tensor it hands out (hidden states, features, logits, embeddings) is on `device`, the
device of its last layer, where the draft sits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

from specforge_het.assets import resolve_model_path
from specforge_het.models import compiled
from specforge_het.models.cache import Cache, HFCache, KVCache
from specforge_het.models.hf_compat import cache_kwarg
from specforge_het.models.lean import attend_mask, cuda_sdpa_kernels, layer_forward, supports_lean
from specforge_het.models.placement import is_sharded, placement_kwargs, run_device

LAST = -1  # feature id of the final normed hidden state


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"Unknown dtype '{name}'. Use one of {sorted(dtypes)}.")
    return dtypes[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was asked for but CUDA is not available. Use --modeling.device cpu.")
    return torch.device(name)


@dataclass
class BaseOutput:
    hidden: torch.Tensor  # [B, S, H] final normed hidden state
    features: torch.Tensor | None  # [B, S, F*H] concatenated features, or None
    logits: torch.Tensor | None  # [B, S', V] for the requested positions, or None


class BaseModel(nn.Module):
    """A frozen HF causal LM with feature taps. Never trained, never saved with a draft.

    The HF model stays the one `from_pretrained` gives: no instance-level forward overrides, and no
    hooks outside our own calls (feature taps are hooked for the duration of a forward that asks for
    them). CPU fast paths are the decoder's to opt into (inference/fast_paths.py).
    """

    def __init__(self, model: nn.Module, tokenizer=None, name: str = ""):
        super().__init__()
        self.model = model.train(False).requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.body = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.layers = self.body.layers
        self._taps: dict[int, torch.Tensor] = {}
        types = getattr(self.config, "layer_types", None) or []
        self.sliding_window = getattr(self.config, "sliding_window", None) if "sliding_attention" in types else None
        self.layer_types = [types[i] if i < len(types) else "full_attention" for i in range(len(self.layers))]
        self.sharded = is_sharded(model)  # over several devices: HF's forward moves activations (placement.py)
        self._run_device = run_device(model, self.layers[-1]) if self.sharded else None
        # KV-cached forwards skip HF's glue (models/lean.py); a sharded base keeps it (its hooks move tensors)
        self.lean = supports_lean(self.layers, self.config) and not self.sharded

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, name_or_path: str, dtype="float32", device="cpu", attn_implementation="sdpa",
             device_map: str = "", max_memory: str = "") -> BaseModel:
        """Load a base; `device_map` (auto, balanced, ...) and `max_memory` ('0=17.5GiB,1=17GiB') let HF place
        it over several devices instead of moving it whole to `device` (see models/placement.py)."""
        path = resolve_model_path(name_or_path)
        place = placement_kwargs(device_map, max_memory)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation, **place
        )
        if not place:
            model = model.to(resolve_device(device) if isinstance(device, str) else device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model, tokenizer, name=name_or_path)

    @classmethod
    def from_config(cls, m, dtype: str | None = None, device: str | None = None) -> BaseModel:
        """`load` with every base-loading key of a ModelingConfig (dtype/device overridable by the caller)."""
        return cls.load(m.base_model, dtype or m.dtype, device or m.device, m.attn_implementation,
                        device_map=m.device_map, max_memory=m.max_memory)

    # ------------------------------------------------------------ shape facts
    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        """Where inputs go and outputs come back (and the draft sits): the LM head's device, or for a sharded
        base the device its last layer runs on."""
        return self._run_device if self._run_device is not None else self.lm_head.weight.device

    def _here(self, t: torch.Tensor) -> torch.Tensor:
        """A sharded base's outputs are brought to `device` (a no-op for a base on one device)."""
        return t.to(self._run_device) if self._run_device is not None else t

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def describe(self) -> dict:
        """Identity of the base, stored in every draft's config.json and checked on load."""
        return {
            "name": self.name,
            "model_type": self.config.model_type,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_layers": self.num_layers,
        }

    # ------------------------------------------------------------ pieces
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._here(self.body.get_input_embeddings()(input_ids))  # Gemma's scaling included

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head on final-normed hidden states (softcapping applied where the family has it)."""
        logits = self._here(self.lm_head(hidden))
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._here(self.body.norm(hidden))

    def new_cache(self, capacity: int = 0) -> Cache:
        """A cache that keeps every entry: sliding layers are windowed by the mask, not by eviction.

        Supported families on one device get a preallocated `KVCache` (sized for `capacity` entries,
        grown on demand) and the lean forward; others (and sharded bases) an `HFCache` and HF's forward.
        """
        return KVCache(len(self.layers), capacity or 256) if self.lean else HFCache()

    def _tap(self, idx: int):
        def hook(_module, _inputs, output):
            self._taps[idx] = self._here(output[0] if isinstance(output, tuple) else output)

        return hook

    @contextlib.contextmanager
    def _tapping(self, want: frozenset[int]):
        """Forward hooks on the layers whose outputs are wanted (ids 1..L), removed when the block ends."""
        handles = [self.layers[i - 1].register_forward_hook(self._tap(i)) for i in sorted(want)
                   if 1 <= i <= len(self.layers)]
        self._taps = {}
        try:
            yield self._taps
        finally:
            for h in handles:
                h.remove()
            self._taps = {}

    # ------------------------------------------------------------ masks
    def attention_masks(self, positions: torch.Tensor, past_len: int, tree_mask: torch.Tensor | None,
                        past_mask: torch.Tensor | None = None, past_positions: torch.Tensor | None = None):
        """Additive 4-D masks [1, 1, S, past+S] for S new tokens at absolute `positions` [S].

        `tree_mask` [S, S] (bool, ancestor-or-self) defaults to causal. Cached keys sit at
        `past_positions` [past] (default 0..past-1) and are all seen unless `past_mask` [S, past] (bool)
        says which each new token sees. Sliding-window families get a second mask keyed 'sliding_attention'.
        """
        s, device = positions.shape[0], positions.device
        if tree_mask is None:
            tree_mask = torch.ones(s, s, dtype=torch.bool, device=device).tril()
        seen = torch.ones(s, past_len, dtype=torch.bool, device=device) if past_mask is None else past_mask
        allowed = torch.cat([seen.to(device), tree_mask], dim=1)
        neg = torch.finfo(self.dtype).min
        full = torch.zeros(allowed.shape, dtype=self.dtype, device=device).masked_fill_(~allowed, neg)
        if self.sliding_window is None:
            return full[None, None]
        past_pos = torch.arange(past_len, device=device) if past_positions is None else past_positions
        key_pos = torch.cat([past_pos.to(device), positions])
        in_window = (positions[:, None] - key_pos[None, :]) < self.sliding_window  # HF: kv > q - window
        sliding = full.masked_fill(~in_window, neg)
        return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}

    # ------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,  # [1, S]
        cache: Cache,
        positions: torch.Tensor | None = None,  # [S] absolute positions
        tree_mask: torch.Tensor | None = None,  # [S, S] bool
        feature_layers: tuple[int, ...] = (),
        logits: str = "all",  # "all" | "last" | "none"
        past_mask: torch.Tensor | None = None,  # [S, past] bool: the cached entries each new token sees (default all)
        past_positions: torch.Tensor | None = None,  # [past] positions of the cached entries (default 0..past-1)
    ) -> BaseOutput:
        if not hasattr(cache, "kv"):
            raise TypeError(f"{type(cache).__name__} is not a specforge_het cache (models/cache.py): wrap an HF "
                            "cache as HFCache(cache), or make one with base.new_cache().")
        past = cache.get_seq_length()
        s = input_ids.shape[1]
        if positions is None:
            positions = torch.arange(past, past + s, device=input_ids.device)
        kv = cache.kv  # the lean forward writes a KVCache; HF's forward fills any other cache
        if past_mask is not None and tuple(past_mask.shape) != (s, past):
            raise ValueError(f"past_mask has shape {tuple(past_mask.shape)}; it must be [S, past] = [{s}, {past}] "
                             "(one row per new token, one column per cached entry).")
        if past_positions is not None and tuple(past_positions.shape) != (past,):
            raise ValueError(f"past_positions has shape {tuple(past_positions.shape)}; it must be [past] = [{past}] "
                             "(the position of every cached entry).")
        seen = (past_mask, past_positions)
        if kv is not None:
            hidden, taps = self._lean_forward(input_ids, kv, positions, tree_mask, frozenset(feature_layers), seen)
        else:
            hidden, taps = self._hf_forward(input_ids, cache, positions, tree_mask, frozenset(feature_layers), seen)
        feats = None
        if feature_layers:
            taps = {**taps, LAST: hidden}
            if 0 in feature_layers:
                taps[0] = self.embed(input_ids)
            feats = torch.cat([taps[i] for i in feature_layers], dim=-1)
        head_in = {"all": hidden, "last": hidden[:, -1:], "none": None}[logits]
        return BaseOutput(hidden, feats, None if head_in is None else self.head(head_in))

    def _hf_forward(self, input_ids, cache: Cache, positions, tree_mask, want: frozenset,
                    seen: tuple = (None, None)) -> tuple[torch.Tensor, dict]:
        mask = self.attention_masks(positions, cache.get_seq_length(), tree_mask, *seen)
        with self._tapping(want) as taps:
            out = self.body(
                input_ids=input_ids, attention_mask=mask, position_ids=positions[None],
                use_cache=True, **{cache_kwarg(self.body): cache.hf},
            )
            return self._here(out.last_hidden_state), dict(taps)

    def _lean_forward(self, input_ids, cache: KVCache, positions, tree_mask, want: frozenset,
                      seen: tuple = (None, None)) -> tuple[torch.Tensor, dict]:
        """The body over HF's own modules, without HF's glue (see models/lean.py); same outputs.
        `seen`: (past_mask, past_positions) as `forward` takes them."""
        if not self.lean:
            why = "a base sharded over several devices" if self.sharded else type(self.layers[0]).__name__
            raise ValueError(f"{why} has no lean forward: use an HFCache (new_cache).")
        past, s = cache.length, input_ids.shape[1]
        h = self.body.embed_tokens(input_ids)
        pos_ids, rope, masks, taps = positions[None], {}, {}, {}
        if compiled.applies(self.layers, s, past):
            return self._compiled_forward(h, cache, positions, tree_mask, want, seen)
        for i, layer in enumerate(self.layers):
            kind = self.layer_types[i]
            if kind not in rope:
                rope[kind] = self._rotary(h, pos_ids, kind)
                window = self.sliding_window if kind == "sliding_attention" else None
                masks[kind] = attend_mask(positions, past, tree_mask, window, *seen)
            h = layer_forward(layer, h, *rope[kind], masks[kind], cache, i)
            if i + 1 in want:
                taps[i + 1] = h
        cache.advance(s)
        return self.body.norm(h), taps

    def _compiled_forward(self, h, cache: KVCache, positions, tree_mask, want: frozenset,
                          seen: tuple) -> tuple[torch.Tensor, dict]:
        """`_lean_forward` through the compiled layer stack (models/compiled.py): every mask explicit."""
        past, s = cache.length, h.shape[1]
        if tree_mask is None:
            tree_mask = torch.ones(s, s, dtype=torch.bool, device=h.device).tril()
        rope, masks = {}, {}
        for kind in dict.fromkeys(self.layer_types):
            rope[kind] = self._rotary(h, positions[None], kind)
            window = self.sliding_window if kind == "sliding_attention" else None
            masks[kind] = attend_mask(positions, past, tree_mask, window, *seen)
        outs = compiled.run(self.layers, h, None, rope, masks, cache)
        cache.advance(s)
        return self.body.norm(outs[-1]), {i: outs[i - 1] for i in want if 1 <= i <= len(outs)}

    def _rotary(self, h: torch.Tensor, pos_ids: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.body.rotary_emb, Gemma3RotaryEmbedding):
            return self.body.rotary_emb(h, pos_ids, kind)
        return self.body.rotary_emb(h, pos_ids)

    @torch.no_grad()
    def features(self, input_ids: torch.Tensor, feature_layers: tuple[int, ...], attention_mask=None,
                 head: bool = True) -> BaseOutput:
        """Features and logits for whole sequences (training, data generation); no cache kept.

        `attention_mask` [B, S] (1 = token, 0 = right padding) is passed through to HF. `head=False`
        skips the LM head (logits None): callers that need only features avoid a [B, S, V] tensor.
        """
        with self._tapping(frozenset(feature_layers)) as tapped, cuda_sdpa_kernels(self.device.type):
            out = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            taps = dict(tapped)
        hidden = self._here(out.last_hidden_state)
        taps[LAST] = hidden
        if 0 in feature_layers:
            taps[0] = self.embed(input_ids)
        feats = torch.cat([taps[i] for i in feature_layers], dim=-1) if feature_layers else None
        return BaseOutput(hidden, feats, self.head(hidden) if head else None)
