"""The decoding methods the bench compares, each behind one call: `run(input_ids [1, n], max_new_tokens)`.

Every method decodes greedily at batch 1 from the same token ids, stops at the same EOS ids and
the same `max_new_tokens`. HF methods call `transformers.generate` on the base's own HF model,
which is plain: the one `from_pretrained` gives, with no instance-level forward and no hooks of
ours (the suite checks it before every HF call: `integrity.py`). Ours call the built-in `Decoder`
with its fast paths (`--inference.fast_paths`), which it applies only while it generates. Each
method reports its base forwards: ours from the decoder, HF's by a stopping criterion that counts
generate's steps (one per base forward). Methods, generations, timing and records are the
evaluation harness's (inference/harness.py), the same for every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from specforge_het.bench.integrity import check_plain
from specforge_het.inference.decoder import Decoder, eos_ids
from specforge_het.inference.harness import Generation, Method, decoder_method
from specforge_het.inference.lookup import LookupProposer
from specforge_het.inference.proposer import DraftProposer, TreeSpec
from specforge_het.models.linears import packed_linears

BASELINE = "hf"
# name -> what it is; the table and the plot keep this order
METHODS: dict[str, str] = {
    "hf": "HF generate",
    "hf-packed": "HF packed (diag.)",
    "ours-base": "ours base-only",
    "hf-pld": "HF prompt lookup",
    "hf-assisted": "HF assisted",
    "hf-uag": "HF universal assisted",
    "ours-standalone": "ours standalone",
    "ours-chain": "ours chain",
    "ours-tree": "ours tree",
    "ours-tree-lookup": "ours tree + lookup",
    "ours-auto": "ours auto",
    "ours-lookup": "ours prompt lookup",
    "ours-auto-lookup": "ours auto + lookup",
}
OURS_DRAFTED = ("ours-chain", "ours-tree", "ours-tree-lookup", "ours-auto", "ours-auto-lookup")  # these need a draft
DIAGNOSTIC = ("hf-packed",)  # run only when named: what HF generate cost when our fast paths leaked into it


class CountForwards(StoppingCriteria):
    """A `generate` stopping criterion that never stops and counts its calls: one per step, and every
    step of greedy, prompt-lookup and assisted generation is one forward of the base (tests check
    the count against a forward hook). It leaves the model untouched, unlike a hook."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.calls += 1
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def parse_methods(spec) -> list[str]:
    """'hf,ours-tree' (or a list) -> known method names, in table order; the baseline is always kept."""
    if spec is None or spec == "":
        return [m for m in METHODS if m not in DIAGNOSTIC]
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


def hf_method(name: str, base, config_extra: dict | None = None, packed: bool = False, **generate_kwargs) -> Method:
    """HF `generate` on the base's HF model, batch 1, with an explicit attention mask. The model is plain
    (checked before every call) unless `packed` (the hf-packed diagnostic: our packed linears on)."""

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Generation:
        ids = input_ids.to(base.device)
        gen = hf_generation_config(base, max_new_tokens, **(config_extra or {}))
        steps = CountForwards()
        with packed_linears(base.model if packed else None):
            out = base.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen,
                                      stopping_criteria=StoppingCriteriaList([steps]), **generate_kwargs)
        return Generation(out[0, ids.shape[1]:].tolist(), forwards=steps.calls)

    assistant = generate_kwargs.get("assistant_model")
    plain = () if packed else tuple(m for m in (base.model, assistant) if m is not None)
    # untimed, before every call: the models it runs on must be unmodified HF (bench/integrity.py)
    return Method(name, METHODS[name], run, before=partial(check_plain, METHODS[name], plain) if plain else None)


def ours_method(name: str, base, proposer, label: str | None = None, fast_paths: str = "auto") -> Method:
    """Our decoder, timed for the whole call like the HF peers (prefill included)."""
    return decoder_method(name, Decoder(base, proposer, fast_paths=fast_paths), label or METHODS[name])


def same_vocabulary(tok_a, tok_b) -> bool:
    return len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


def load_assistant(name_or_path: str, base):
    """A separate HF model instance (never the base object itself, so base forwards stay countable)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specforge_het.assets import resolve_model_path

    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=base.dtype).to(base.device).train(False)
    return model, AutoTokenizer.from_pretrained(path)


def auto_tree(base, draft, inf, draft_path: str, lookup_tokens: int = 0) -> tuple[TreeSpec | None, str, dict | None]:
    """(tree spec, '', decision) chosen by the cost model (`--inference.tree auto`; with the prompt-lookup branch
    when `lookup_tokens`), or (None, reason, None)."""
    try:
        from specforge_het.inference.auto_tree import choose_tree
    except ImportError as e:
        return None, f"--inference.tree auto is not available in this build ({e})", None
    from rich.console import Console

    decision = choose_tree(base, draft, inf, draft_path, Console(stderr=True), lookup_tokens=lookup_tokens)
    return decision.tree_spec, "", decision.to_json()


def tree_specs(inf) -> dict[str, TreeSpec]:
    return {
        "ours-chain": TreeSpec("chain", inf.max_depth),
        "ours-tree": TreeSpec("dynamic", inf.max_depth, inf.top_k, inf.total_tokens),
    }


def tree_label(prefix: str, spec: TreeSpec) -> str:
    if spec.kind == "chain":
        return f"{prefix} chain {spec.max_depth}"
    if spec.kind == "dynamic":
        return f"{prefix} tree d{spec.max_depth} k{spec.top_k} n{spec.total_tokens}"
    return f"{prefix} {spec.kind}"


@dataclass
class Assistants:
    same: tuple | None = None  # (model, tokenizer) sharing the base's vocabulary
    other: tuple | None = None  # (model, tokenizer) with another tokenizer
    same_reason: str = ""  # why hf-assisted is skipped when `same` is None
    other_reason: str = ""


def _hf_with_assistant(name: str, base, assistants: Assistants) -> Method | str:
    if name == "hf-assisted":
        if assistants.same is None:
            return assistants.same_reason
        return hf_method(name, base, assistant_model=assistants.same[0])
    if assistants.other is None:
        return assistants.other_reason
    model, tok = assistants.other
    return hf_method(name, base, assistant_model=model, tokenizer=base.tokenizer, assistant_tokenizer=tok)


def _ours_standalone(name: str, base, inf, assistants: Assistants) -> Method | str:
    """Our decoder with hf-uag's assistant as a standalone draft LM (algorithms/standalone), on the same tree
    as ours-tree. The assistant stays one plain HF instance: our fast paths touch it only while ours runs."""
    if assistants.other is None:
        return assistants.other_reason
    from specforge_het.algorithms.standalone import StandaloneProposer
    from specforge_het.models.base import BaseModel

    model, tok = assistants.other
    spec = tree_specs(inf)["ours-tree"]
    proposer = StandaloneProposer.for_base(base, BaseModel(model, tok), spec)
    return ours_method(name, base, proposer, tree_label("ours standalone", spec), inf.fast_paths)


def _ours_speculative(name: str, base, draft, inf, draft_path: str, lookup_tokens: int) -> Method | str:
    if name == "ours-lookup":  # draft-free: the prompt-lookup branch alone, in our decoder
        lookup = LookupProposer(None, lookup_tokens, inf.lookup_ngram, base.device)
        return ours_method(name, base, lookup, f"ours prompt lookup {lookup_tokens}", inf.fast_paths)
    if draft is None:
        return "no draft"
    if name in ("ours-auto", "ours-auto-lookup"):
        spec, reason, decision = auto_tree(base, draft, inf, draft_path,
                                           lookup_tokens if name == "ours-auto-lookup" else 0)
        if spec is None:
            return reason
        proposer: DraftProposer | LookupProposer = DraftProposer(draft, spec)
        label = tree_label("ours auto:", spec)
        if name == "ours-auto-lookup":
            proposer = LookupProposer(proposer, lookup_tokens, inf.lookup_ngram, base.device)
            label += f" + lookup {lookup_tokens}"
        method = ours_method(name, base, proposer, label, inf.fast_paths)
        method.info = {"tree_auto": decision}
        return method
    if name == "ours-tree-lookup":  # the configured tree (as ours-tree) with the lookup branch merged in
        spec = tree_specs(inf)["ours-tree"]
        lookup = LookupProposer(DraftProposer(draft, spec), lookup_tokens, inf.lookup_ngram, base.device)
        return ours_method(name, base, lookup, tree_label("ours", spec) + f" + lookup {lookup_tokens}", inf.fast_paths)
    spec = tree_specs(inf)[name]
    return ours_method(name, base, DraftProposer(draft, spec), tree_label("ours", spec), fast_paths=inf.fast_paths)


def build_methods(base, draft, inf, wanted: list[str], assistants: Assistants, pld_tokens: int = 10,
                  draft_path: str = "") -> tuple[list[Method], dict[str, str]]:
    """The wanted methods that can run here, and {name: reason} for those skipped."""
    methods: list[Method] = []
    skipped: dict[str, str] = {}
    for name in wanted:
        made: Method | str
        if name == "hf":
            made = hf_method(name, base)
        elif name == "ours-base":
            made = ours_method(name, base, None, fast_paths=inf.fast_paths)
        elif name == "hf-packed":
            made = hf_method(name, base, packed=True)
        elif name == "hf-pld":
            made = hf_method(name, base, {"prompt_lookup_num_tokens": pld_tokens})
        elif name in ("hf-assisted", "hf-uag"):
            made = _hf_with_assistant(name, base, assistants)
        elif name == "ours-standalone":
            made = _ours_standalone(name, base, inf, assistants)
        else:
            made = _ours_speculative(name, base, draft, inf, draft_path, inf.lookup_tokens or pld_tokens)
        if isinstance(made, str):
            skipped[name] = made
        else:
            methods.append(made)
    return methods, skipped
