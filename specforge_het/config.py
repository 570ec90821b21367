"""Typed config sections, presets (`--@name`: specforge_het/presets, $SPECFORGE_HET_PRESETS), safe overrides.

Resolution order (later wins): defaults in code -> `--use_saved_json_config PATH` ->
`--@preset` flags in command-line order -> `--section.key value` overrides.
Values are parsed by each field's declared type; nothing is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specforge_het.config_values import FALSE, TRUE, ConfigError, coerce, nearest
from specforge_het.presets import load_presets


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None):
    """A dataclass field with help text (shown by `show`) and optional allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelingConfig:
    base_model: str = _f("", "base model: embedded name (smollm2-135m-instruct, gemma3-270m), local folder or Hub id")
    draft_path: str = _f("", "trained draft folder to load (config.json + model.safetensors)")
    algorithm: str = _f("eagle_v3", "draft algorithm: a name registered in specforge_het/algorithms (eagle_v2, eagle_v3, ...)")
    draft_family: str = _f("llama", "HF decoder family of the draft layers", ("llama", "qwen3", "gemma3"))
    draft_hidden_size: int = _f(0, "draft width; 0 = the base width")
    draft_num_layers: int = _f(1, "number of draft decoder layers")
    draft_num_heads: int = _f(0, "attention heads; 0 = derived from the width (head_dim 64)")
    draft_num_kv_heads: int = _f(0, "key/value heads; 0 = same as draft_num_heads")
    draft_head_dim: int = _f(0, "head dim; 0 = width / heads")
    draft_intermediate_size: int = _f(0, "MLP width; 0 = 4 x width rounded like Llama")
    draft_rope_theta: float = _f(0.0, "rotary base of the draft's own rotary embedding; 0 = inherit: init_from's layers' theta, else the base's")
    draft_first_input_norm: bool = _f(True, "EagleV2: false = layer 0 has no input_layernorm (the EAGLE-1/2 layout SGLang and EAGLE load)")
    feature_layers: list[int] = _f([], "base layers handed to the draft (HF hidden_states index, -1 = final normed); [] = algorithm default")
    vocab: str = _f("reduced", "draft vocabulary: base = full base vocab, reduced = subset of base ids, foreign = draft tokenizer", ("base", "reduced", "foreign"))
    draft_vocab_size: int = _f(32000, "rows of the draft head: the most frequent base ids of the training data (vocab reduced), or the most frequent of the foreign rows (vocab foreign); capped at what exists")
    draft_tokenizer: str = _f("", "foreign tokenizer (embedded name, folder or Hub id) when vocab = foreign")
    init_from: str = _f("", "pretrained LM whose layers (and embeddings) initialise the draft")
    init_layers: list[int] = _f([], "which layers of init_from to copy; [] = the first draft_num_layers")
    lora_rank: int = _f(0, "LoRA rank for layers copied from init_from; 0 = full fine-tuning")
    init_draft: str = _f("", "train on from this trained draft folder: its architecture, vocabulary and weights ('' = a new draft)")
    widen_vocab: int = _f(0, "with init_draft (vocab reduced): widen the draft's vocabulary to this many rows, adding the training data's most frequent answer tokens it cannot propose yet; see widen_init (0 = keep its vocabulary)")
    grow_layers: int = _f(0, "with init_draft: add this many decoder layers after the trained ones; each starts from the base's last layer (same family and width; else random) with its output projections at zero, so the grown draft starts out computing what the trained one did (0 = keep its layers)")
    widen_init: str = _f("map", "how a widened draft's new head rows start: map = the base's LM-head row through the linear map fitted from the base's rows to the draft's trained rows (least squares over the ids both hold; works across widths); base = the base's LM-head row itself (same width only)", ("map", "base"))
    dtype: str = _f("float32", "dtype of base and draft", ("float32", "bfloat16", "float16"))
    draft_dtype: str = _f("", "training: dtype of the draft's trained weights ('' = modeling.dtype); float32 under a bfloat16 base keeps float32 master weights (with training.precision bf16). Inference loads drafts in the base's dtype", ("", "float32", "bfloat16", "float16"))
    device: str = _f("cpu", "torch device: cpu, cuda, cuda:1, ... or auto")
    device_map: str = _f("", "shard the base over devices with HF's device map ('' = the whole base on modeling.device): auto, balanced, balanced_low_0, sequential. A base over several devices runs HF's forward; the draft sits on the device of its last layer", ("", "auto", "balanced", "balanced_low_0", "sequential"))
    max_memory: str = _f("", "per-device budgets for modeling.device_map, e.g. 0=17.5GiB,1=17GiB,cpu=30GiB (GPU index, cpu or disk = size; '' = HF's default)")
    attn_implementation: str = _f("sdpa", "HF attention implementation for base and draft", ("sdpa", "eager"))


@dataclass
class TrainingConfig:
    output_dir: str = _f("runs/draft", "where checkpoints (draft folders) are written")
    mode: str = _f("online", "online = base features per batch; offline = stored features", ("online", "offline"))
    learning_rate: float = _f(3e-4, "peak learning rate")
    per_device_batch_size: int = _f(4, "sequences per device per step")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    num_epochs: float = _f(1.0, "passes over the data")
    max_steps: int = _f(-1, "stop after this many steps (-1 = use num_epochs)")
    warmup_ratio: float = _f(0.02, "linear warm-up share of all steps")
    max_grad_norm: float = _f(0.5, "gradient clipping")
    top_k_accuracy: int = _f(4, "k of the reported top-k accuracy")
    seed: int = _f(0, "random seed for the run")
    save_steps: int = _f(500, "save a draft folder every N steps")
    logging_steps: int = _f(10, "log every N steps")
    resume_from_checkpoint: str = _f("", "checkpoint folder to resume from ('' = none)")
    report_to: str = _f("none", "HF report_to: none, tensorboard, wandb")
    eval_steps: int = _f(0, "evaluate every N steps (0 = at the end only)")
    save_total_limit: int = _f(3, "keep at most this many checkpoints")
    ddp_backend: str = _f("", "torch.distributed backend ('' = HF default: nccl on GPU, gloo on CPU)")
    deepspeed: str = _f("", "DeepSpeed JSON config passed to HF Trainer ('' = off); configs/deepspeed_zero2.json ships; needs torchrun, GPUs and the deepspeed package")
    fsdp: str = _f("", "FSDP options passed to HF Trainer, e.g. 'full_shard auto_wrap' ('' = off); needs torchrun and GPUs")
    dataloader_num_workers: int = _f(0, "data loader worker processes (they read and pad rows and stored features)")
    precision: str = _f("auto", "compute precision: bf16 = bfloat16 autocast with float32 master weights; auto = bf16 where the device has fast bfloat16 (CPU with AMX, CUDA with bf16), else fp32", ("auto", "bf16", "fp32"))
    bf16: bool = _f(False, "legacy switch: true = precision bf16 (false leaves training.precision in charge)")
    loss: str = _f("ce", "draft loss against the base distribution: ce = soft cross-entropy (EAGLE), tv = total variation (acceptance-targeting, SpecForge's LK idea), ce+tv = their sum (measured: tv alone collapses on a fresh draft; docs/training.md), ce+top1 = ce plus cross-entropy on the base's top-1 token (what greedy acceptance checks)", ("ce", "tv", "ce+tv", "ce+top1"))
    loss_chunk: int = _f(1024, "rows per chunk of the fused LM-head loss and of the base targets (bounds their memory)")
    group_by_length: bool = _f(True, "batches of similar length (less padding; HF LengthGroupedSampler)")
    gradient_checkpointing: bool = _f(False, "recompute the draft layers in backward (less memory, ~30% more compute)")


@dataclass
class DatasetConfig:
    path: str = _f("", "training data: gen_dataset output, conversations JSONL, or EAGLE .ckpt folder")
    max_length: int = _f(2048, "truncate sequences to this many tokens")
    eval_fraction: float = _f(0.05, "share of rows held out for evaluation")
    system_prompt: str = _f("", "system prompt added when the chat template is applied ('' = none)")


@dataclass
class DatasetGenerationConfig:
    output_dir: str = _f("data/generated", "where the generated Arrow dataset is written")
    ds_range: str = _f("", "'a,b': only conversations a..b-1 of the prompt file")
    batch_size: int = _f(64, "rows decoded together (continuous batching: a finished row takes the next prompt)")
    part_size: int = _f(0, "conversations per committed part (a killed run redoes at most one part); 0 = 4 x batch_size")
    dtype: str = _f("auto", "dtype of the base while generating; auto = bfloat16 where the device computes it fast (CUDA, a CPU with AMX-BF16), else float32", ("auto", "float32", "bfloat16", "float16"))
    max_new_tokens: int = _f(1024, "answer length cap per turn (also capped by what still fits in max_length)")
    max_length: int = _f(2048, "prompt + answer cap")
    temperature: float = _f(0.0, "0 = greedy, > 0 = sampled")
    system_prompt: str = _f("", "system prompt ('' = none)")
    store_features: bool = _f(False, "store base features for offline training")
    feature_dtype: str = _f("bfloat16", "dtype of stored features", ("float16", "bfloat16", "float32"))
    servers: list[str] = _f([], "host:port of SGLang/OpenAI-compatible servers ([] = generate in process)")
    concurrency: int = _f(8, "parallel requests per server")
    timeout_s: float = _f(120.0, "per-request timeout")
    strict: bool = _f(False, "fail on the first bad input line instead of skipping it")


@dataclass
class InferenceConfig:
    tree: str = _f("dynamic", "draft tree kind", ("chain", "static", "dynamic", "auto"))
    static_tree: str = _f("eagle1_small", "named static tree shape when tree = static")
    max_depth: int = _f(5, "draft steps per verify (chain length / tree depth)")
    top_k: int = _f(4, "children expanded per node (dynamic tree)")
    total_tokens: int = _f(16, "draft tokens kept per verify, root included (dynamic tree)")
    max_new_tokens: int = _f(128, "stop after this many new tokens")
    temperature: float = _f(0.0, "0 = greedy; > 0 = lossless rejection sampling")
    top_p: float = _f(1.0, "nucleus sampling mass (1 = off)")
    top_k_sampling: int = _f(0, "top-k sampling filter (0 = off)")
    seed: int = _f(0, "seed of the sampling generator")
    target_model_only: bool = _f(False, "base-only decoding through the same code path")
    compare: bool = _f(False, "run base-only and speculative on the same prompts and compare")
    system_prompt: str = _f("", "system prompt ('' = the chat template's default)")
    chat_template: bool = _f(True, "wrap prompts with the base tokenizer's chat template")
    warmup: bool = _f(True, "one untimed warm-up generation before timing")
    lookup_tokens: int = _f(0, "prompt lookup: up to this many tokens that followed the latest n-gram match in the context, added to the draft tree as one more branch (0 = off)")
    lookup_ngram: int = _f(3, "prompt lookup: longest n-gram matched against the context (tried down to 1)")
    auto_acceptance: str = _f("measure", "tree auto: the draft's acceptance measured on calibration prompts, or read from its training_log.json", ("measure", "training_log"))
    auto_prompts: str = _f("", "tree auto: calibration prompts JSONL (FILE[:N]); '' = built-in generic prompts")
    auto_remeasure: bool = _f(False, "tree auto: measure again instead of using the cached cost model")
    fast_paths: str = _f("auto", "the decoder's CPU fast paths, applied only while it generates: auto = on a CPU, packed linears + LM head on the tree rows acceptance reads, on an accelerator the device strategy; compile = auto, and on a CPU the base's layers as one compiled graph (inductor, frozen weights; compiled once per process, about 1.5 min); off = the device strategy: plain modules, LM head over all tree rows, tree and greedy acceptance on the device (one host read per step)", ("auto", "compile", "off"))


# Sections contributed from above this module: each draft algorithm registers its own knobs as a section
# named after it (algorithms/registry.py), so `--eagle_v3.ttt_steps` lives with EagleV3. Registering needs
# only `import specforge_het.algorithms` (no torch); every command line does it before resolving its config.
_CONTRIBUTED: dict[str, type] = {}
_ALIASES: dict[str, str] = {}  # deprecated dotted key -> its key now, e.g. training.ttt_steps -> eagle_v3.ttt_steps
_CHOICES: dict[str, list[str]] = {}  # dotted key -> values registered from above (modeling.algorithm: the algorithms)


def add_choice(key: str, value: str) -> None:
    """Allow `value` for `key` (the registry adds each algorithm's name to modeling.algorithm)."""
    _CHOICES.setdefault(key, []).append(value)


def register_section(name: str, cls: type, moved_from: str = "") -> None:
    """Add section `name` (a dataclass of _f fields). moved_from: the section its keys sat in before; the old
    dotted keys stay accepted as deprecated aliases (saved run configs, old command lines)."""
    if name in SECTIONS or _CONTRIBUTED.get(name, cls) is not cls:
        raise ValueError(f"config section '{name}' is defined twice")
    _CONTRIBUTED[name] = cls
    for f in dataclasses.fields(cls) if moved_from else ():
        _ALIASES[f"{moved_from}.{f.name}"] = f"{name}.{f.name}"


@dataclass(eq=False)
class Config:
    modeling: ModelingConfig = field(default_factory=ModelingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    dataset_generation: DatasetGenerationConfig = field(default_factory=DatasetGenerationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        self._contributed: dict[str, Any] = {}

    def _sections(self) -> dict[str, Any]:
        """The contributed sections, defaults made for any registered since this Config was made."""
        for name, cls in _CONTRIBUTED.items():
            if name not in self._contributed:
                self._contributed[name] = cls()
        return self._contributed

    def __getattr__(self, name: str) -> Any:  # only for names that are not fields: the contributed sections
        if name.startswith("_") or name not in _CONTRIBUTED:
            raise AttributeError(f"Config has no section '{name}' (known: {', '.join(SECTIONS + tuple(_CONTRIBUTED))})")
        return self._sections()[name]

    def section_names(self) -> tuple[str, ...]:
        return SECTIONS + tuple(self._sections())

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {**dataclasses.asdict(self), **{n: dataclasses.asdict(s) for n, s in self._sections().items()}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()


SECTIONS = ("modeling", "training", "dataset", "dataset_generation", "inference")


def _field(cfg: Config, key: str) -> tuple[Any, dataclasses.Field]:
    """Return (section object, field) for a dotted key, failing with the nearest valid names."""
    key = _ALIASES.get(key, key)
    section, _, name = key.partition(".")
    if section not in cfg.section_names():
        raise ConfigError(f"Unknown config section '{section}' in '{key}'.{nearest(section, cfg.section_names())}")
    obj = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        valid = [f"{section}.{n}" for n in fields]
        raise ConfigError(f"Unknown config key '{key}'.{nearest(key, valid)}")
    return obj, fields[name]


def set_value(cfg: Config, key: str, value: Any) -> None:
    obj, f = _field(cfg, key)
    hints = typing.get_type_hints(type(obj))
    label = key if key not in _ALIASES else f"{_ALIASES[key]}' (deprecated spelling '{key})"
    choices = f.metadata.get("choices") or tuple(_CHOICES.get(_ALIASES.get(key, key), ())) or None
    setattr(obj, f.name, coerce(label, hints[f.name], value, choices))


def apply_mapping(cfg: Config, mapping: dict[str, Any], origin: str) -> None:
    """Apply {section: {key: value}} (a preset, or a saved JSON config) onto cfg."""
    for section, values in mapping.items():
        if section == "description":
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: '{section}' must be a table of keys.{nearest(section, cfg.section_names())}")
        for name, value in values.items():
            try:
                set_value(cfg, f"{section}.{name}", value)
            except ConfigError as e:
                raise ConfigError(f"{origin}: {e}") from None


# ---------------------------------------------------------------- presets

def apply_preset(cfg: Config, name: str, presets: dict[str, dict[str, Any]]) -> None:
    if name not in presets:
        raise ConfigError(f"Unknown preset '@{name}'.{nearest(name, presets)}")
    apply_mapping(cfg, presets[name], f"preset @{name}")


# ---------------------------------------------------------------- command line

def _is_override(arg: str) -> bool:
    """`--section.key[=value]`: any flag with a dot (fire flags cannot contain one), so typos in
    the section name reach the config parser and fail with a suggestion."""
    if not arg.startswith("--") or arg.startswith("--@"):
        return False
    return "." in arg[2:].split("=", 1)[0]


def _is_bool_key(key: str) -> bool:
    try:
        obj, f = _field(Config(), key)
    except ConfigError:
        return False
    return typing.get_type_hints(type(obj))[f.name] is bool


def split_argv(argv: list[str]) -> tuple[list[str], list[tuple[str, str]], str | None, list[str]]:
    """Split argv into (presets, overrides, saved_json_path, rest for fire)."""
    presets, overrides, saved, rest = [], [], None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--@"):
            presets.append(arg[3:])
        elif arg.split("=", 1)[0] == "--use_saved_json_config":
            if "=" in arg:
                saved = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                saved, i = argv[i + 1], i + 1
            else:
                raise ConfigError("--use_saved_json_config needs a path to a saved run_config.json.")
        elif _is_override(arg):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif _is_bool_key(key) and (i + 1 >= len(argv) or argv[i + 1].lower() not in TRUE | FALSE):
                value = "true"  # a bare boolean flag
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                raise ConfigError(f"--{key} needs a value.")
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return presets, overrides, saved, rest


def resolve(argv: list[str], presets: dict[str, dict[str, Any]] | None = None) -> tuple[Config, list[str], list[str]]:
    """Resolve a Config from argv. Returns (config, preset names used, remaining argv)."""
    names, overrides, saved, rest = split_argv(argv)
    cfg = Config()
    if saved:
        cfg = load_json_config(saved)
    if names:
        presets = load_presets() if presets is None else presets
        for name in names:
            apply_preset(cfg, name, presets)
    for key, value in overrides:
        set_value(cfg, key, value)
    return cfg, names, rest


RUN_CONFIG = "run_config.json"


def save_json_config(cfg: Config, directory: str | Path, presets: list[str] | None = None) -> Path:
    """Write the resolved config beside a run's output; reload it with --use_saved_json_config."""
    path = Path(directory) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**cfg.to_dict(), "description": f"resolved from presets {presets or []}"}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_json_config(path: str | Path) -> Config:
    path = Path(path)
    if path.is_dir():
        path = path / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"Saved config '{path}' not found. Point --use_saved_json_config at a run's {RUN_CONFIG}.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}).") from None
    cfg = Config()
    apply_mapping(cfg, data, str(path))
    return cfg
