"""Training rows from any of the three sources, checked against the base, and the collator.

Sources (`--dataset.path`):
  * a `gen_dataset` folder (meta.json + dataset/ [+ features/]): rows made by the base itself;
  * a conversations JSONL in our schema: tokenised here with the base's chat template (online only);
  * a folder of EAGLE-format `.ckpt` files (offline: last-layer features included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from specforge_het.config import ConfigError


@dataclass
class TrainingRows:
    rows: list[dict]  # {"input_ids": list[int], "loss_mask": list[int], "key": feature key or None}
    kind: str  # generated | conversations | eagle
    features: object | None = None  # callable key -> Tensor [T, F*H] for offline rows
    stored_layers: list[int] | None = None
    hidden_size: int | None = None


def _check_generated_meta(meta: dict, base, path: Path) -> None:
    from specforge_het.data.store import tokenizer_fingerprint

    want, got = meta.get("base", {}), base.describe()
    for key in ("model_type", "num_layers", "hidden_size", "vocab_size"):
        if want.get(key) != got[key]:
            raise ConfigError(f"dataset '{path}' was made for base '{want.get('name')}' ({key} {want.get(key)}) but the "
                              f"base is '{got['name']}' ({key} {got[key]}). Regenerate it with this base.")
    fp = meta.get("tokenizer", {}).get("fingerprint")
    if base.tokenizer is not None and fp and fp != tokenizer_fingerprint(base.tokenizer):
        raise ConfigError(f"dataset '{path}' was tokenised with another tokenizer ({meta['tokenizer'].get('name_or_path')}) "
                          "than the base's. Regenerate it with this base.")


def _generated(path: Path, base) -> TrainingRows:
    from specforge_het.data.store import load_dataset_dir, load_features

    ds, meta = load_dataset_dir(path)
    _check_generated_meta(meta, base, path)
    rows = [{"input_ids": list(r["input_ids"]), "loss_mask": list(r["loss_mask"]), "key": int(r["index"])} for r in ds]
    layers = meta.get("stored_layers") or meta.get("feature_layers") or None
    has = (path / "features").is_dir() and any((path / "features").iterdir())
    return TrainingRows(rows, "generated", (lambda k: load_features(path, k)) if has else None,
                        layers if has else None, meta.get("hidden_size"))


def _conversations(path: Path, base, max_length: int, system_prompt: str) -> TrainingRows:
    from specforge_het.data.formats import TooLongError, read_conversations, tokenize_conversation
    from specforge_het.data.report import BadInputReport

    report = BadInputReport(strict=False)
    rows = []
    for conv in read_conversations(path, report):
        try:
            ids, mask = tokenize_conversation(base.tokenizer, conv["conversations"], max_length, system_prompt)
        except TooLongError as e:
            report.add(str(path), 0, f"conversation {conv['id']}: {e}")
            continue
        rows.append({"input_ids": ids, "loss_mask": mask, "key": None})
    if report.count:
        report.print_summary()
    return TrainingRows(rows, "conversations")


def _eagle(path: Path) -> TrainingRows:
    from specforge_het.data.eagle_format import iter_eagle_folder
    from specforge_het.data.report import BadInputReport

    report = BadInputReport(strict=False)
    rows, feats = [], {}
    for i, row in enumerate(iter_eagle_folder(path, report)):
        feats[i] = row["features"]
        rows.append({"input_ids": row["input_ids"], "loss_mask": row["loss_mask"], "key": i})
    hidden = next(iter(feats.values())).shape[-1] if feats else None
    return TrainingRows(rows, "eagle", feats.__getitem__, [-1], hidden)


def load_rows(dcfg, base) -> TrainingRows:
    if not dcfg.path:
        raise ConfigError("no training data: give --dataset.path (a gen_dataset folder, a conversations JSONL or an EAGLE .ckpt folder)")
    path = Path(dcfg.path)
    if not path.exists():
        raise ConfigError(f"--dataset.path '{path}' does not exist")
    if path.is_dir() and (path / "meta.json").is_file():
        out = _generated(path, base)
    elif path.is_dir() and any(path.rglob("*.ckpt")):
        out = _eagle(path)
    elif path.is_file():
        out = _conversations(path, base, dcfg.max_length, dcfg.system_prompt)
    else:
        raise ConfigError(f"--dataset.path '{path}' is neither a gen_dataset folder (meta.json), an EAGLE .ckpt folder nor a JSONL file")
    out.rows = [r for r in out.rows if sum(r["loss_mask"]) > 0]
    if not out.rows:
        raise ConfigError(f"dataset '{path}' has no rows with assistant tokens to learn from (empty after filtering)")
    return out


def token_counts(rows: list[dict], vocab_size: int) -> torch.Tensor:
    """Frequency of loss-masked (assistant) tokens: chooses the reduced draft vocabulary."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for r in rows:
        ids = torch.tensor(r["input_ids"])[torch.tensor(r["loss_mask"]).bool()]
        counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts


class RowsDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict], max_length: int):
        self.rows, self.max_length = rows, max_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        n = min(len(r["input_ids"]), self.max_length)
        return {"input_ids": r["input_ids"][:n], "loss_mask": r["loss_mask"][:n], "key": r["key"]}


class Collator:
    """Right-pads a batch; attaches stored features for offline training."""

    def __init__(self, pad_id: int, features=None):
        self.pad_id, self.features = pad_id, features

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        t = max(len(x["input_ids"]) for x in items)
        b = len(items)
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        attn = torch.zeros(b, t, dtype=torch.long)
        lm = torch.zeros(b, t, dtype=torch.long)
        for i, x in enumerate(items):
            n = len(x["input_ids"])
            ids[i, :n], attn[i, :n], lm[i, :n] = torch.tensor(x["input_ids"]), 1, torch.tensor(x["loss_mask"])
        out = {"input_ids": ids, "attention_mask": attn, "loss_mask": lm}
        if self.features is not None:
            feats = [self.features(x["key"])[: len(x["input_ids"])].float() for x in items]
            out["features"] = torch.zeros(b, t, feats[0].shape[-1])
            for i, f in enumerate(feats):
                out["features"][i, : f.shape[0]] = f
        return out

