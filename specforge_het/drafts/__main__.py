"""`python -m specforge_het.drafts ship SRC NAME`: copy a trained draft folder into
`specforge_het/drafts/NAME` with bfloat16 weights (half the size), keeping its provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fire
import torch
from safetensors.torch import load_file, save_file

from specforge_het.assets import SHIPPED_DRAFTS, shipped_drafts
from specforge_het.models.speculative import FORMAT, WEIGHTS, read_draft_config

KEEP = ("config.json", "provenance.json", "training_log.json", "run_config.json")


def ship(src: str, name: str, dtype: str = "bfloat16", rebuild: str = "") -> None:
    """Copy draft folder SRC to specforge_het/drafts/NAME; REBUILD is the command text to record."""
    read_draft_config(src)  # refuse anything that is not a draft folder
    dst = SHIPPED_DRAFTS / name
    dst.mkdir(parents=True, exist_ok=True)
    want = getattr(torch, dtype)
    state = {k: (v.to(want) if v.is_floating_point() else v).contiguous() for k, v in load_file(str(Path(src) / WEIGHTS)).items()}
    save_file(state, str(dst / WEIGHTS), metadata={"format": FORMAT})
    for f in KEEP:
        if (Path(src) / f).is_file():
            shutil.copy(Path(src) / f, dst / f)
    for tok in Path(src).glob("tokenizer*"):
        shutil.copy(tok, dst / tok.name)
    prov = json.loads((dst / "provenance.json").read_text()) if (dst / "provenance.json").is_file() else {}
    prov.update({"shipped_from": str(src), "shipped_dtype": dtype, "rebuild": rebuild or prov.get("rebuild", "")})
    (dst / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"shipped {src} -> {dst} ({sum(p.stat().st_size for p in dst.iterdir()) / 1e6:.1f} MB)")


def list_drafts() -> None:
    for name in shipped_drafts():
        print(name)


if __name__ == "__main__":
    fire.Fire({"ship": ship, "list": list_drafts})
