"""EAGLE offline data reader: weights_only loading, strict keys, shapes and lengths."""

from __future__ import annotations

import collections

import pytest
import torch

from specforge_het.data.eagle_format import EagleFormatError, eagle_folder_meta, iter_eagle_folder, read_eagle_file
from specforge_het.data.report import BadInputError, BadInputReport


class Payload:
    """An arbitrary object: unpickling it would run code of the file's choosing."""

    def __init__(self):
        self.x = 1


def sample(t=5, h=8, batch=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = {"input_ids": torch.randint(0, 100, (t,), generator=g), "hidden_state": torch.randn(t, h, generator=g),
         "loss_mask": torch.tensor([0] * (t // 2) + [1] * (t - t // 2))}
    if batch:
        d = {k: v.unsqueeze(0) for k, v in d.items()}
    return d


def save(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("batch", [False, True])
def test_round_trip(tmp_path, batch):
    d = sample(batch=batch)
    out = read_eagle_file(save(tmp_path / "data_0.ckpt", d))
    flat = sample()
    assert torch.equal(out["input_ids"], flat["input_ids"]) and out["input_ids"].dtype == torch.long
    assert torch.equal(out["hidden_state"], flat["hidden_state"])
    assert out["loss_mask"].tolist() == [0, 0, 1, 1, 1]


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = save(tmp_path / "evil.ckpt", {"input_ids": Payload(), "hidden_state": torch.zeros(1, 2), "loss_mask": torch.zeros(1)})
    with pytest.raises(EagleFormatError, match=r"evil\.ckpt: refused: .*weights_only=True.*pickled object of class .*Payload"):
        read_eagle_file(path)


def test_non_tensor_containers_refused(tmp_path):
    with pytest.raises(EagleFormatError, match=r"list\.ckpt: not a dict: holds a list"):
        read_eagle_file(save(tmp_path / "list.ckpt", [torch.zeros(2)]))
    ordered = collections.OrderedDict(sample())  # a dict subclass is still a dict: accepted
    assert read_eagle_file(save(tmp_path / "odict.ckpt", ordered))["hidden_state"].shape == (5, 8)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("loss_mask"), r"wrong keys: has \['hidden_state', 'input_ids'\], expected exactly"),
    (lambda d: d.update(attention_mask=torch.ones(5)), "wrong keys"),
    (lambda d: d.update(loss_mask=torch.ones(4, dtype=torch.long)), r"length mismatch: \{'input_ids': 5, 'hidden_state': 5, 'loss_mask': 4\}"),
    (lambda d: d.update(hidden_state=torch.randn(5)), r"wrong shape: 'hidden_state' has shape \[5\], expected \[T x H\]"),
    (lambda d: d.update(input_ids=torch.zeros(2, 5, dtype=torch.long)), "wrong shape: 'input_ids'"),
    (lambda d: d.update(input_ids=torch.zeros(5)), "wrong dtype: input_ids"),
    (lambda d: d.update(hidden_state=torch.zeros(5, 8, dtype=torch.long)), "wrong dtype: hidden_state"),
    (lambda d: d.update(loss_mask=torch.full((5,), 2)), "bad loss_mask"),
    (lambda d: d.update(input_ids=[1, 2, 3, 4, 5]), "wrong type: 'input_ids' is a list"),
])
def test_malformed_files_refused_naming_the_file(tmp_path, change, message):
    d = sample()
    change(d)
    path = save(tmp_path / "bad.ckpt", d)
    with pytest.raises(EagleFormatError, match=message) as err:
        read_eagle_file(path)
    assert str(path) in str(err.value)


def test_garbage_file_refused(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a torch file")
    with pytest.raises(EagleFormatError, match=r"junk\.ckpt: refused"):
        read_eagle_file(tmp_path / "junk.ckpt")


def test_folder_iteration_sorted_with_bad_files_reported(tmp_path):
    save(tmp_path / "b" / "data_1.ckpt", sample(t=4, seed=1))
    save(tmp_path / "a" / "data_0.ckpt", sample(t=6, seed=2, batch=True))
    save(tmp_path / "a" / "data_2.ckpt", {"input_ids": torch.zeros(3, dtype=torch.long)})
    save(tmp_path / "c.ckpt", sample(t=3, h=4))  # another hidden size
    save(tmp_path / "z.ckpt", Payload())
    (tmp_path / "notes.txt").write_text("ignored")
    report = BadInputReport(strict=False)
    rows = list(iter_eagle_folder(tmp_path, report))
    assert [r["id"] for r in rows] == ["a/data_0.ckpt", "b/data_1.ckpt"]
    assert rows[0]["features"].shape == (6, 8) and len(rows[0]["input_ids"]) == 6 == len(rows[0]["loss_mask"])
    assert isinstance(rows[1]["input_ids"], list) and rows[1]["loss_mask"] == [0, 0, 1, 1]
    assert report.by_reason == {"wrong keys": 1, "hidden size mismatch": 1, "refused": 1}
    assert eagle_folder_meta(tmp_path) == {"hidden_size": 8, "rows": 5}
    with pytest.raises(BadInputError, match=r"data_2\.ckpt: wrong keys"):
        list(iter_eagle_folder(tmp_path, BadInputReport(strict=True)))


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .ckpt files"):
        eagle_folder_meta(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        list(iter_eagle_folder(tmp_path / "missing", BadInputReport(False)))
