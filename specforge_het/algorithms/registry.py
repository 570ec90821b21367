"""The registry of draft algorithms and the interface each one implements.

An algorithm is one folder `algorithms/<name>/` (config.py, model.py, loss.py, __init__.py) whose
`__init__.py` registers a `DraftAlgorithm` subclass with `@register("<name>")`. Everything else finds
it by the name a config or a draft folder's config.json carries: `get_algorithm(name)`.
No algorithm name is compared anywhere else; code asks the algorithm instead.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from specforge_het.config import add_choice, register_section
from specforge_het.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class NoOptions:
    """An algorithm without training knobs of its own."""


class DraftAlgorithm:
    """One draft algorithm: its draft class, how a new draft is laid out, its training knobs and loss.

    Class attributes a subclass sets:
      name           filled by @register
      draft_cls      the draft model class (a models.draft.DraftModel subclass) built from a DraftConfig;
                     a property importing model.py on use keeps registration free of torch
      Config         dataclass of the algorithm's own training knobs: the config section `<name>.*`
      config_moved_from  the section those keys sat in before (old keys stay accepted as aliases)
      own_head_for_base_vocab  False: with vocab = base the draft reads the base's LM head (no own head)
      embeds_at_draft_width    True: the draft consumes token embeddings at its own width (a narrower
                               draft than the base gets a projection of the base's embedding)
      uses_draft_folder        False: the draft is no draft folder; `proposer()` builds the decoder's
                               proposer from the algorithm's own config section, and `training_module()`
                               what `train` optimises (standalone)
      load_option              the command-line option that loads what `train` saves for this algorithm
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoOptions
    config_moved_from: ClassVar[str] = ""
    own_head_for_base_vocab: ClassVar[bool] = True
    embeds_at_draft_width: ClassVar[bool] = False
    uses_draft_folder: ClassVar[bool] = True
    load_option: ClassVar[str] = "--modeling.draft_path"

    @property
    def draft_cls(self) -> type:
        """The draft model class (imported on use in the algorithm's __init__.py)."""
        raise NotImplementedError

    def default_feature_layers(self, num_base_layers: int) -> list[int]:
        """The base layers (HF hidden_states index, -1 = final normed) the draft reads by default."""
        raise NotImplementedError

    def build(self, cfg, vocab=None):
        """A new draft (fresh weights) of this algorithm for a DraftConfig and vocabulary adapter."""
        return self.draft_cls(cfg, vocab)

    def check(self, options) -> None:
        """Refuse contradictory knobs (raise config.ConfigError naming the key)."""

    def check_training(self, cfg) -> None:
        """Refuse training settings of the resolved config this algorithm cannot train with (ConfigError naming the
        key); `train` calls it before loading anything. Default: the modeling keys of a new draft folder."""
        check_draft_folder_keys(cfg.modeling)

    def training_warnings(self, tcfg) -> list[str]:
        """Notes for the user about how shared training settings affect this algorithm."""
        return []

    def proposer(self, base, options, tree, temperature: float = 0.0, generator=None):
        """The decoder's proposer for an algorithm without a draft folder (uses_draft_folder = False), built
        from `options` (its Config); tree a TreeSpec, temperature/generator for sampled drafts."""
        raise NotImplementedError(f"{self.name} drafts are draft folders: load one with algorithms.io.load_draft")

    def training_module(self, cfg, base, rows, options):
        """For an algorithm without draft folders (uses_draft_folder = False): the module `train` optimises in
        place of training.trainer.DraftTrainingModule, with its interface: `draft` (the trained nn.Module),
        `algorithm`, `options`, `forward(input_ids, attention_mask, loss_mask, features=None)` returning
        {"loss", "count", "counters"}, and `save(folder, state, provenance_extra)` writing what `load_option`
        loads. cfg: the resolved config; base: the frozen base; rows: the training rows (training.data)."""
        raise NotImplementedError(f"{self.name} trains draft folders: train.py builds them from the modeling section")

    def loss(self, draft, batch, tcfg, options) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """(loss summed over positions, positions N, metric counters) of one TrainBatch.

        tcfg: the shared training settings (loss kind, loss_chunk, top_k_accuracy, ...);
        options: this algorithm's `Config`. The trainer divides by N (or by num_items_in_batch).
        """
        raise NotImplementedError


_REGISTRY: dict[str, type[DraftAlgorithm]] = {}


def register(name: str):
    """Class decorator: make a DraftAlgorithm subclass known by `name`; its `Config` becomes section `name`."""

    def deco(cls: type[DraftAlgorithm]) -> type[DraftAlgorithm]:
        if name in _REGISTRY:
            raise ValueError(f"algorithm '{name}' registered twice")
        if dataclasses.fields(cls.Config):
            register_section(name, cls.Config, cls.config_moved_from)
        add_choice("modeling.algorithm", name)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def check_draft_folder_keys(m) -> None:
    """Refuse contradictory modeling keys of a new draft folder (vocabulary, initialisation, LoRA), naming them."""
    if m.vocab == "foreign" and not m.draft_tokenizer:
        raise ConfigError("modeling.vocab = foreign needs modeling.draft_tokenizer (the draft's own tokenizer and embedding).")
    if m.vocab != "foreign" and m.draft_tokenizer:
        raise ConfigError(f"modeling.draft_tokenizer is set but modeling.vocab = {m.vocab}: set vocab = foreign or drop the tokenizer.")
    if m.init_draft and (m.init_from or m.lora_rank):
        raise ConfigError("modeling.init_draft continues a trained draft; drop modeling.init_from / lora_rank, which build a new one.")
    if m.lora_rank and not m.init_from:
        raise ConfigError("modeling.lora_rank needs modeling.init_from (LoRA adapts pretrained layers).")


def get_algorithm(name: str) -> DraftAlgorithm:
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f" Did you mean {near[0]}?" if near else ""
        raise ValueError(f"Unknown draft algorithm '{name}'. Registered: {sorted(_REGISTRY)}.{hint}")
    return _REGISTRY[name]()


def algorithm_names() -> list[str]:
    return sorted(_REGISTRY)


def algorithm_of(draft) -> DraftAlgorithm:
    """The algorithm of a draft model (from its config)."""
    return get_algorithm(draft.cfg.algorithm)


def default_options(name: str) -> Any:
    """A fresh `Config` (default knobs) of algorithm `name`."""
    return get_algorithm(name).Config()


def options_of(cfg, name: str) -> Any:
    """Algorithm `name`'s knobs in a resolved config (its section), or its defaults when it has none."""
    return getattr(cfg, name) if name in cfg.section_names() else default_options(name)
