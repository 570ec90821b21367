"""`python -m specforge_het.drafts ship SRC NAME`: copy a trained draft folder into
`specforge_het/drafts/NAME` with bfloat16 weights (half the size), keeping its provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fire
import torch
from safetensors.torch import load_file, save_file

from specforge_het.algorithms.io import FORMAT, WEIGHTS, read_draft_config
from specforge_het.assets import SHIPPED_DRAFTS, shipped_drafts

KEEP = ("provenance.json", "training_log.json", "run_config.json")  # config.json is written (it may be compacted)


def ship(src: str, name: str, dtype: str = "bfloat16", rebuild: str = "", vocab_rows: int = 0, data: str = "") -> None:
    """Copy draft folder SRC to specforge_het/drafts/NAME; REBUILD is the command text to record.

    A foreign-vocabulary draft can be shrunk on the way (its SmolLM2-size embedding and head would
    otherwise be ~110 MB): --vocab_rows N keeps the N head rows most frequent in the training data
    (--data, default: the dataset.path SRC was trained on) and the embedding rows that data needs.
    """
    cfg = read_draft_config(src)  # refuse anything that is not a draft folder
    want = getattr(torch, dtype)
    state = load_file(str(Path(src) / WEIGHTS))
    config = json.loads((Path(src) / "config.json").read_text())
    compacted = None
    if vocab_rows:
        if cfg.embed != "foreign":
            raise SystemExit(f"--vocab_rows shrinks foreign-vocabulary drafts; '{src}' has embed = {cfg.embed}.")
        compacted = _compact(state, config, src, vocab_rows, data)
    state = {k: (v.to(want) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    dst = SHIPPED_DRAFTS / name  # created only now: a refused compaction leaves nothing behind
    dst.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst / WEIGHTS), metadata={"format": FORMAT})
    for f in KEEP:  # a file SRC lacks is removed, not left over from the draft shipped before
        if (Path(src) / f).is_file():
            shutil.copy(Path(src) / f, dst / f)
        elif (dst / f).is_file():
            (dst / f).unlink()
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for tok in Path(src).glob("tokenizer*"):
        shutil.copy(tok, dst / tok.name)
    prov = json.loads((dst / "provenance.json").read_text()) if (dst / "provenance.json").is_file() else {}
    prov.update({"shipped_from": str(src), "shipped_dtype": dtype, "rebuild": rebuild or prov.get("rebuild", "")})
    if compacted:
        prov["compacted_vocabulary"] = compacted
    (dst / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"shipped {src} -> {dst} ({sum(p.stat().st_size for p in dst.iterdir()) / 1e6:.1f} MB)")


def _compact(state: dict, config: dict, src: str, rows: int, data: str) -> dict:
    """Shrink the foreign vocabulary in `state`/`config` in place; -> what was done, for the provenance."""
    from specforge_het.config import DatasetConfig
    from specforge_het.models.adapters import compact_foreign_vocab
    from specforge_het.models.base import BaseModel
    from specforge_het.training.data import load_rows, token_counts

    run = Path(src) / "run_config.json"
    if not data and run.is_file():
        data = json.loads(run.read_text()).get("dataset", {}).get("path", "")
    if not data:
        raise SystemExit(f"--vocab_rows needs the training data's token counts: give --data (no run_config.json in '{src}').")
    base = BaseModel.load(config["base"]["name"])
    counts = token_counts(load_rows(DatasetConfig(path=data, max_length=1 << 30), base).rows, base.vocab_size)
    d2t, input_map = state["vocab.d2t"], state["vocab.input_map"]
    keep_rows, keep_embed, new_map = compact_foreign_vocab(d2t, input_map, counts, rows, state["embed_tokens.weight"].shape[0])
    covered = float(counts[d2t[keep_rows]].sum() / counts.sum().clamp(min=1))
    before = (d2t.numel(), state["embed_tokens.weight"].shape[0])
    state["lm_head.weight"] = state["lm_head.weight"][keep_rows]
    state["vocab.d2t"], state["vocab.draft_token_ids"] = d2t[keep_rows], state["vocab.draft_token_ids"][keep_rows]
    state["embed_tokens.weight"], state["vocab.input_map"] = state["embed_tokens.weight"][keep_embed], new_map
    config["draft_vocab_size"], config["embed_vocab_size"] = keep_rows.numel(), keep_embed.numel()
    config["input_map_width"] = new_map.shape[1]
    print(f"vocabulary: head rows {before[0]} -> {keep_rows.numel()} (covering {covered:.1%} of the answer tokens "
          f"in {data}), embedding rows {before[1]} -> {keep_embed.numel()}")
    return {"data": data, "head_rows": [before[0], keep_rows.numel()], "embedding_rows": [before[1], keep_embed.numel()],
            "answer_token_coverage": round(covered, 4)}


def list_drafts() -> None:
    for name in shipped_drafts():
        print(name)


if __name__ == "__main__":
    fire.Fire({"ship": ship, "list": list_drafts})
