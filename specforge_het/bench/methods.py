"""The decoding methods the bench compares, each behind one call: `run(input_ids [1, n], max_new_tokens)`.

Every method decodes greedily at batch 1 from the same token ids, stops at the same EOS ids and
the same `max_new_tokens`. HF methods call `transformers.generate` on the base's own HF model;
ours call the built-in `Decoder`. Timing, forward counting and memory are done by the suite,
the same way for every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from specforge_het.inference.decoder import Decoder, eos_ids
from specforge_het.inference.proposer import DraftProposer, TreeSpec

BASELINE = "hf"
# name -> what it is; the table and the plot keep this order
METHODS: dict[str, str] = {
    "hf": "HF generate",
    "ours-base": "ours base-only",
    "hf-pld": "HF prompt lookup",
    "hf-assisted": "HF assisted",
    "hf-uag": "HF universal assisted",
    "ours-chain": "ours chain",
    "ours-tree": "ours tree",
    "ours-auto": "ours auto",
}
OURS_SPECULATIVE = ("ours-chain", "ours-tree", "ours-auto")


@dataclass
class Generation:
    tokens: list[int]  # new tokens, EOS included when it stopped there
    accept_lengths: list[int] | None = None  # ours: tokens committed per verify step (prefill not counted)


@dataclass
class Method:
    name: str
    label: str
    run: Callable[[torch.Tensor, int], Generation]


class ForwardCounter:
    """Counts forward calls of a module (the base's decoder stack) through a forward hook."""

    def __init__(self, module: nn.Module):
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def parse_methods(spec) -> list[str]:
    """'hf,ours-tree' (or a list) -> known method names, in table order; the baseline is always kept."""
    if spec is None or spec == "":
        return list(METHODS)
    names = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)} (comma-separated).")
    return [m for m in METHODS if m in names or m == BASELINE]


def hf_generation_config(base, max_new_tokens: int, **extra):
    """A fresh greedy GenerationConfig: the model's own defaults (sampling, penalties) never leak in."""
    from transformers import GenerationConfig

    eos = sorted(eos_ids(base))
    pad = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else eos[0]
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                            use_cache=True, **extra)


def hf_method(name: str, base, config_extra: dict | None = None, **generate_kwargs) -> Method:
    """HF `generate` on the base's HF model, batch 1, with an explicit attention mask."""

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        ids = input_ids.to(base.device)
        gen = hf_generation_config(base, max_new_tokens, **(config_extra or {}))
        out = base.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen, **generate_kwargs)
        return Generation(out[0, ids.shape[1]:].tolist())

    return Method(name, METHODS[name], run)


def ours_method(name: str, base, proposer: DraftProposer | None, label: str | None = None) -> Method:
    decoder = Decoder(base, proposer)

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        res = decoder.generate(input_ids, max_new_tokens)
        return Generation(res.tokens, res.accept_lengths if proposer is not None else None)

    return Method(name, label or METHODS[name], run)


def same_vocabulary(tok_a, tok_b) -> bool:
    return len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


def load_assistant(name_or_path: str, base):
    """A separate HF model instance (never the base object itself, so base forwards stay countable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specforge_het.assets import resolve_model_path

    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=base.dtype).to(base.device).train(False)
    return model, AutoTokenizer.from_pretrained(path)


def auto_tree_available() -> str | None:
    """None when the cost-model tree chooser can be used, else the reason it cannot."""
    try:
        import specforge_het.inference.cost_model  # noqa: F401
    except ImportError as e:
        return f"--inference.tree auto is not available in this build ({e})"
    return None


def tree_specs(inf) -> dict[str, TreeSpec]:
    return {
        "ours-chain": TreeSpec("chain", inf.max_depth),
        "ours-tree": TreeSpec("dynamic", inf.max_depth, inf.top_k, inf.total_tokens),
        "ours-auto": TreeSpec("auto", inf.max_depth, inf.top_k, inf.total_tokens),
    }


def tree_label(name: str, spec: TreeSpec) -> str:
    if spec.kind == "chain":
        return f"ours chain {spec.max_depth}"
    if spec.kind == "dynamic":
        return f"ours tree d{spec.max_depth} k{spec.top_k} n{spec.total_tokens}"
    return METHODS[name]


@dataclass
class Assistants:
    same: tuple | None = None  # (model, tokenizer) sharing the base's vocabulary
    other: tuple | None = None  # (model, tokenizer) with another tokenizer
    same_reason: str = ""  # why hf-assisted is skipped when `same` is None
    other_reason: str = ""


def build_methods(base, draft, inf, wanted: list[str], assistants: Assistants,
                  pld_tokens: int = 10) -> tuple[list[Method], dict[str, str]]:
    """The wanted methods that can run here, and {name: reason} for those skipped."""
    methods, skipped = [], {}
    specs = tree_specs(inf)
    for name in wanted:
        if name == "hf":
            methods.append(hf_method(name, base))
        elif name == "ours-base":
            methods.append(ours_method(name, base, None))
        elif name == "hf-pld":
            methods.append(hf_method(name, base, {"prompt_lookup_num_tokens": pld_tokens}))
        elif name == "hf-assisted":
            if assistants.same is None:
                skipped[name] = assistants.same_reason
            else:
                methods.append(hf_method(name, base, assistant_model=assistants.same[0]))
        elif name == "hf-uag":
            if assistants.other is None:
                skipped[name] = assistants.other_reason
            else:
                model, tok = assistants.other
                methods.append(hf_method(name, base, assistant_model=model, tokenizer=base.tokenizer,
                                         assistant_tokenizer=tok))
        elif name in OURS_SPECULATIVE:
            reason = "no draft" if draft is None else auto_tree_available() if name == "ours-auto" else None
            if reason:
                skipped[name] = reason
                continue
            try:
                proposer = DraftProposer(draft, specs[name])
            except ValueError as e:  # a tree kind this build's proposer does not know
                skipped[name] = f"the decoder does not take --inference.tree auto yet ({e})"
                continue
            methods.append(ours_method(name, base, proposer, tree_label(name, specs[name])))
    return methods, skipped
