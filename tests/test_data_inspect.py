"""probe_datasets and view on tiny datasets built here in gen_dataset's layout, EAGLE folders and JSONL."""

from __future__ import annotations

import io
import json

import datasets
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file

from specforge_het.config import Config
from specforge_het.data.formats import tokenize_conversation, write_conversations
from specforge_het.data.inspect import (
    dataset_kind,
    dataset_stats,
    length_histogram,
    masked_text,
    probe_datasets,
    view,
)

CONVS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Write a short poem."}, {"role": "assistant", "content": "The sea at night,\nthe sky."},
     {"role": "user", "content": "Again."}, {"role": "assistant", "content": "The quick fox."}],
    [{"role": "user", "content": "Numbers: 1 2 3"}],  # no answer: no assistant span
]
HIDDEN = 8


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tok_a):
    path = tmp_path_factory.mktemp("tok")
    tok_a.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rows(tok_a):
    return [tokenize_conversation(tok_a, c, 4096) for c in CONVS]


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tok_dir, rows):
    """A folder in gen_dataset's layout: meta.json, dataset/ (save_to_disk), features/*.safetensors."""
    root = tmp_path_factory.mktemp("gen")
    (root / "meta.json").write_text(json.dumps({"format": "specforge_het.dataset", "version": 1,
                                             "tokenizer": {"name_or_path": tok_dir}, "base": "tiny"}))
    datasets.Dataset.from_dict({"id": [f"c{i}" for i in range(len(rows))], "input_ids": [r[0] for r in rows],
                                "loss_mask": [r[1] for r in rows]}).save_to_disk(str(root / "dataset"))
    (root / "features").mkdir()
    save_file({str(i): torch.zeros(len(r[0]), HIDDEN, dtype=torch.float16) for i, r in enumerate(rows)},
              str(root / "features" / "part-0000000.safetensors"))
    return root


@pytest.fixture(scope="module")
def eagle(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("eagle")
    for i, (ids, mask) in enumerate(rows):
        torch.save({"input_ids": torch.tensor([ids]), "hidden_state": torch.zeros(1, len(ids), HIDDEN),
                    "loss_mask": torch.tensor([mask])}, root / f"data_{i}.ckpt")
    return root


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "c.jsonl"
    write_conversations(path, [{"id": f"c{i}", "conversations": c} for i, c in enumerate(CONVS)])
    return path


def expected(rows):
    tokens = sum(len(r[0]) for r in rows)
    masked = sum(sum(r[1]) for r in rows)
    return tokens, masked


def test_generated_folder_numbers(generated, rows):
    s = dataset_stats(Config(), generated)
    tokens, masked = expected(rows)
    assert (s.kind, s.rows, s.tokens, s.masked_tokens, s.no_assistant) == ("generated", 3, tokens, masked, 1)
    assert s.lengths == [len(r[0]) for r in rows]
    feature_file = generated / "features" / "part-0000000.safetensors"
    assert s.feature_bytes == feature_file.stat().st_size
    assert s.feature_bytes_per_token == pytest.approx(feature_file.stat().st_size / tokens)
    assert s.feature_bytes_per_token > 2 * HIDDEN  # float16 x HIDDEN per token, plus the shard header
    assert s.disk_bytes > s.feature_bytes


def test_probe_prints_the_numbers(generated, rows):
    con, buf = console()
    probe_datasets(Config(), [], str(generated), console=con)
    out = buf.getvalue()
    tokens, masked = expected(rows)
    assert f"{tokens} (mean" in out
    assert f"{masked} ({100 * masked / tokens:.1f}%)" in out
    assert "rows without assistant span" in out and "bytes/token" in out and "tokens per row" in out
    assert "█" in out


def test_eagle_folder_probe(eagle, rows):
    s = dataset_stats(Config(), eagle)
    tokens, masked = expected(rows)
    assert (s.kind, s.rows, s.tokens, s.masked_tokens, s.no_assistant) == ("eagle", 3, tokens, masked, 1)
    assert s.notes["hidden size"] == HIDDEN and s.feature_bytes == s.disk_bytes


def test_conversations_probe_with_and_without_a_base(jsonl, tok_dir, rows, tmp_path):
    s = dataset_stats(Config(), jsonl)
    assert s.rows == 3 and s.lengths == [] and s.notes["user turns"] == 4 and s.notes["assistant turns"] == 3
    cfg = Config()
    cfg.modeling.base_model = tok_dir
    s = dataset_stats(cfg, jsonl)
    assert (s.tokens, s.masked_tokens, s.no_assistant) == (*expected(rows), 1)
    cfg.dataset.max_length = len(rows[0][0])  # the longer conversation no longer fits: reported, skipped
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{broken\n" + jsonl.read_text())
    s = dataset_stats(cfg, broken)
    assert s.rows == 3 and len(s.lengths) == 2 and s.bad.by_reason == {"malformed JSON": 1, "too long": 1}
    assert s.bad.problems[1].line == 3  # file:line of the conversation, past the bad line


def test_length_histogram():
    assert length_histogram([]) == []
    assert length_histogram([5, 5, 5]) == [(5, 5, 3)]
    assert length_histogram([1, 2, 3, 10], bins=2) == [(1, 5, 3), (6, 10, 1)]
    assert sum(c for *_, c in length_histogram(list(range(100)))) == 100


def test_masked_text_colours_exactly_the_masked_tokens(tok_a, rows):
    ids, mask = rows[1]
    text = masked_text(tok_a, ids, mask)
    assert [s.style for s in text.spans] == ["green" if m else "red" for m in mask]
    pieces = [tok_a.decode([i], skip_special_tokens=False) for i in ids]
    assert [text.plain[s.start:s.end] for s in text.spans] == pieces
    green = "".join(text.plain[s.start:s.end] for s in text.spans if s.style == "green")
    assert green == "The sea at night,\nthe sky.<|end|>The quick fox.<|end|>"


def test_view_generated_warns_on_row_without_assistant(generated):
    con, buf = console()
    view(Config(), [], str(generated), [0, 2], console=con)
    out = buf.getvalue()
    assert "row 0  id c0" in out and "Paris." in out
    assert "warning: row 2 (id c2) has no assistant span" in out
    assert "warning: row 0" not in out


def test_view_conversations_and_eagle_need_a_base(jsonl, eagle, tok_dir):
    with pytest.raises(ValueError, match="--modeling.base_model"):
        view(Config(), [], str(jsonl), [0])
    cfg = Config()
    cfg.modeling.base_model = tok_dir
    for path in (jsonl, eagle):
        con, buf = console()
        view(cfg, [], str(path), 1, console=con)
        assert "The quick fox." in buf.getvalue() and "warning" not in buf.getvalue()


def test_view_index_out_of_range(generated):
    with pytest.raises(ValueError, match=r"index 7 out of range: .* has 3 rows \(0\.\.2\)"):
        view(Config(), [], str(generated), [7])


def test_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset"):
        dataset_kind(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="interrupted gen_dataset run"):
        dataset_kind(tmp_path)
