"""What the bench loads besides the base: the draft (given, or the shipped one for this base) and the
HF assistants (a same-tokenizer model for assisted generation, another-tokenizer model for universal
assisted generation)."""

from __future__ import annotations

from specforge_het.assets import shipped_drafts
from specforge_het.bench.methods import Assistants, load_assistant, same_vocabulary
from specforge_het.config import ConfigError

# universal-assisted defaults: base embedded name -> assistant embedded name (different tokenizers)
DEFAULT_UNIVERSAL = {"gemma3-270m": "smollm2-135m-instruct"}
NO_DRAFT = ("no draft for base '{base}' ({algorithm}, vocab {vocab}) and none is shipped for it. Give "
            "--modeling.draft_path FOLDER (train one with `python -m specforge_het.train`), or leave out the "
            "draft methods (ours-chain, ours-tree, ours-tree-lookup, ours-auto, ours-auto-lookup) with --methods hf,ours-base,hf-pld,ours-lookup.")


def find_shipped_draft(base_desc: dict, algorithm: str, vocab: str) -> str | None:
    """The first shipped draft made for this base (by name, else by shape) with this algorithm and vocabulary."""
    from specforge_het.algorithms.io import read_draft_config

    shape = ("model_type", "hidden_size", "vocab_size", "num_layers")
    by_name, by_shape = [], []
    for name in shipped_drafts():
        try:
            cfg = read_draft_config(name)
        except (ValueError, FileNotFoundError):
            continue
        if cfg.algorithm != algorithm or cfg.vocab != vocab:
            continue
        if cfg.base.get("name") == base_desc["name"]:
            by_name.append(name)
        elif all(cfg.base.get(k) == base_desc[k] for k in shape):
            by_shape.append(name)
    found = by_name + by_shape
    return found[0] if found else None


def load_draft_for(m, base):
    """(draft, its name or path) from --modeling.draft_path, else a matching shipped draft; ConfigError if none."""
    from specforge_het.algorithms.io import load_draft

    name = m.draft_path or find_shipped_draft(base.describe(), m.algorithm, m.vocab)
    if not name:
        raise ConfigError(NO_DRAFT.format(base=m.base_model, algorithm=m.algorithm, vocab=m.vocab))
    draft = load_draft(name, base)
    draft.train(False)
    return draft, str(name)


def load_assistants(base, base_name: str, want_same: bool, want_other: bool, assistant: str | None,
                    universal_assistant: str | None) -> Assistants:
    """Load only the assistants whose methods were asked for; state why a method is skipped otherwise."""
    out = Assistants(
        same_reason=f"no --assistant given (a smaller model with the base's tokenizer; none is embedded for {base_name})",
        other_reason="no --universal_assistant given (a model with another tokenizer)",
    )
    if want_same and assistant:
        model, tok = load_assistant(assistant, base)
        if not same_vocabulary(tok, base.tokenizer):
            raise ConfigError(f"--assistant {assistant} has another tokenizer than the base; "
                             f"give it as --universal_assistant {assistant} instead.")
        out.same = (model, tok)
    universal_assistant = universal_assistant or DEFAULT_UNIVERSAL.get(base_name)
    if want_other and universal_assistant:
        model, tok = load_assistant(universal_assistant, base)
        if same_vocabulary(tok, base.tokenizer):
            raise ConfigError(f"--universal_assistant {universal_assistant} has the base's own tokenizer; "
                             f"give it as --assistant {universal_assistant} instead.")
        out.other = (model, tok)
    return out
