"""gen_dataset in process on a tiny base: answers, features, sampling, resume after a kill, ranges + merge, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, conversations, subprocess_env, write_prompts

from specforge_het.algorithms import get_algorithm
from specforge_het.config import Config
from specforge_het.data import store
from specforge_het.data.formats import tokenize_conversation
from specforge_het.data.generate import gen_dataset
from specforge_het.data.report import BadInputError
from specforge_het.data_gen import main as data_gen_main
from specforge_het.inference.prompts import render
from specforge_het.models.base import BaseModel


def make_cfg(base_dir: str, out: Path, **gen) -> Config:
    cfg = Config()
    cfg.modeling.base_model = base_dir
    g = cfg.dataset_generation
    g.output_dir, g.max_new_tokens, g.batch_size, g.dtype = str(out), 8, 2, "float32"
    for k, v in gen.items():
        setattr(g, k, v)
    return cfg


def rows_of(path: Path) -> list[dict]:
    ds, _ = store.load_dataset_dir(path)
    return [dict(r) for r in ds]


def reference_rows(base: BaseModel, rows: list[dict], max_new: int, system: str = "") -> list[dict]:
    """One conversation at a time, unbatched greedy HF generate, turn by turn: what gen_dataset must give.

    A row is the last turn's prompt followed by exactly the tokens the base generated (its end token
    only if it wrote one); earlier answers in the prompt are loss-masked as the template renders them.
    An answer that hits max_new without an end token ends its conversation."""
    out = []
    end = base.tokenizer.eos_token_id
    for index, row in enumerate(rows):
        turns = row["conversations"]
        msgs = [t for t in turns if t["role"] == "system"] or ([{"role": "system", "content": system}] if system else [])
        reason, before = "stop", list(msgs)
        for t in (t for t in turns if t["role"] == "user"):
            before = list(msgs)
            msgs.append(t)
            ids = render(base.tokenizer, msgs)
            seq = base.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                      do_sample=False, pad_token_id=base.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
            new = seq[: seq.index(end) + 1] if end in seq else seq
            prompt = ids[0].tolist()
            msgs.append({"role": "assistant", "content": base.tokenizer.decode(new, skip_special_tokens=True)})
            if end not in seq:
                reason = "length"
                break
        mask = [0] * len(prompt)
        if any(m["role"] == "assistant" for m in before):  # earlier answers, as the template renders them
            prev_ids, prev_mask = tokenize_conversation(base.tokenizer, before, 2048)
            assert prompt[: len(prev_ids)] == prev_ids
            mask[: len(prev_mask)] = prev_mask
        out.append({"id": row["id"], "index": index, "input_ids": prompt + new, "loss_mask": mask + [1] * len(new),
                    "finish_reason": reason})
    return out


def test_base_answers_every_turn_like_unbatched_greedy(tmp_path, prompts, base_dirs, bases) -> None:
    cfg = make_cfg(base_dirs["llama"], tmp_path / "out", batch_size=4, system_prompt="You are kind.")
    gen_dataset(cfg, ["p"], prompts)
    got = rows_of(tmp_path / "out")
    want = reference_rows(bases["llama"], conversations(6), 8, system="You are kind.")
    assert got == want
    tok = bases["llama"].tokenizer
    for r in got:
        text = tok.decode(r["input_ids"])
        assert "OLD answer" not in text  # assistant turns of the file are replaced by the base's answers
        assert ("Be brief." in text) == (r["id"] == "conv-4") and ("You are kind." in text) == (r["id"] != "conv-4")
        if r["finish_reason"] == "stop":
            assert text.count("<|assistant|>") == (2 if r["index"] % 3 == 0 else 1)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["base"] == bases["llama"].describe() and meta["feature_layers"] == [] and meta["ds_range"] is None
    assert json.loads((tmp_path / "out" / "run_config.json").read_text())["dataset_generation"]["batch_size"] == 4


def test_truncated_answer_has_no_end_of_turn_and_ends_the_conversation(tmp_path, prompts, base_dirs, bases) -> None:
    """max_new_tokens 3: every answer is cut, so no row may end in (or contain a masked) end-of-turn token."""
    tok = bases["llama"].tokenizer
    cfg = make_cfg(base_dirs["llama"], tmp_path / "cut", max_new_tokens=3, batch_size=3)
    gen_dataset(cfg, [], prompts)
    rows = rows_of(tmp_path / "cut")
    assert len(rows) == 6 and {r["finish_reason"] for r in rows} == {"length"}
    for r in rows:
        assert r["input_ids"][-1] != tok.eos_token_id and r["loss_mask"][-1] == 1
        assert tok.eos_token_id not in [t for t, m in zip(r["input_ids"], r["loss_mask"]) if m]
        text = tok.decode(r["input_ids"])
        assert text.count("<|assistant|>") == 1  # turn 2 is never asked after a cut answer
        assert sum(r["loss_mask"]) == 3 and r["loss_mask"][-4:] == [0, 1, 1, 1]  # exactly the 3 generated tokens


def test_budget_is_capped_by_max_length_and_nothing_is_thrown_away(tmp_path, prompts, base_dirs, bases) -> None:
    """Prompts of ~30 tokens, max_length 48, max_new 100: answers stop at what fits, rows are kept."""
    tok = bases["llama"].tokenizer
    cfg = make_cfg(base_dirs["llama"], tmp_path / "fit", max_new_tokens=100, max_length=48, batch_size=4)
    gen_dataset(cfg, [], prompts)
    rows = rows_of(tmp_path / "fit")
    skipped = {s["index"] for s in store.skipped_rows(tmp_path / "fit")}
    assert rows and len(rows) + len(skipped) == 6
    for r in rows:  # every kept row is either finished by the base or filled to max_length exactly
        assert len(r["input_ids"]) == 48 if r["finish_reason"] == "length" else r["input_ids"][-1] == tok.eos_token_id


@pytest.mark.parametrize("dtype, layers", [("bfloat16", []), ("float16", [-1]), ("float32", [0, 2])])
def test_stored_features_equal_online(tmp_path, prompts, base_dirs, bases, dtype, layers) -> None:
    cfg = make_cfg(base_dirs["qwen3"], tmp_path, store_features=True, feature_dtype=dtype, batch_size=3)
    cfg.modeling.feature_layers = layers
    gen_dataset(cfg, [], prompts)
    base, tdtype = bases["qwen3"], getattr(torch, dtype)
    want_layers = layers or get_algorithm("eagle_v3").default_feature_layers(base.num_layers)  # the default
    want_layers = want_layers if -1 in want_layers else [*want_layers, -1]  # + the final state, for offline targets
    assert store.read_meta(tmp_path)["feature_layers"] == want_layers
    for r in rows_of(tmp_path):
        stored = store.load_features(tmp_path, r["index"])
        online = base.features(torch.tensor([r["input_ids"]]), tuple(want_layers)).features[0]  # [T, F*H]
        assert stored.dtype == tdtype and stored.shape == (len(r["input_ids"]), 64 * len(want_layers))
        tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
        torch.testing.assert_close(stored.float(), online.to(tdtype).float(), rtol=tol, atol=tol)
    bpt = store.bytes_per_token(tmp_path)
    assert tdtype.itemsize * 64 * len(want_layers) <= bpt < tdtype.itemsize * 64 * len(want_layers) + 16


def test_sampling_is_seeded_per_conversation(tmp_path, prompts, base_dirs) -> None:
    runs = {}
    for name, batch, seed in [("b2", 2, 0), ("b3", 3, 0), ("seed1", 2, 1)]:
        cfg = make_cfg(base_dirs["llama"], tmp_path / name, temperature=1.0, batch_size=batch)
        cfg.inference.seed = seed
        gen_dataset(cfg, [], prompts)
        runs[name] = rows_of(tmp_path / name)
    assert runs["b2"] == runs["b3"]  # a conversation's draws do not depend on its batch
    assert runs["b2"] != runs["seed1"]


def test_too_long_is_skipped_for_good_and_strict_fails(tmp_path, prompts, base_dirs) -> None:
    cfg = make_cfg(base_dirs["llama"], tmp_path / "out", max_length=48)
    gen_dataset(cfg, [], prompts)
    skipped = store.skipped_rows(tmp_path / "out")
    assert skipped and all(s["reason"].startswith("too long") for s in skipped)
    kept = {r["index"] for r in rows_of(tmp_path / "out")}
    assert kept and kept.isdisjoint({s["index"] for s in skipped}) and kept | {s["index"] for s in skipped} == set(range(6))
    errors = [e for e in store.read_errors(tmp_path / "out") if e["kind"] == "skipped"]
    assert sorted(e["index"] for e in errors) == sorted(s["index"] for s in skipped)
    parts = {p: p.stat().st_mtime_ns for p in store.part_files(tmp_path / "out")}
    gen_dataset(cfg, [], prompts)  # nothing left to do: too-long conversations are not retried
    assert {p: p.stat().st_mtime_ns for p in store.part_files(tmp_path / "out")} == parts
    strict = make_cfg(base_dirs["llama"], tmp_path / "strict", max_length=48, strict=True)
    with pytest.raises(BadInputError, match=r"prompts.jsonl:\d+: too long"):
        gen_dataset(strict, [], prompts)


def test_rerun_with_other_settings_is_refused(tmp_path, prompts, base_dirs) -> None:
    gen_dataset(make_cfg(base_dirs["llama"], tmp_path, ds_range="0,2"), [], prompts)
    with pytest.raises(store.DatasetDirError, match=r"max_new_tokens=8, this run has max_new_tokens=9"):
        gen_dataset(make_cfg(base_dirs["llama"], tmp_path, ds_range="0,2", max_new_tokens=9), [], prompts)
    with pytest.raises(store.DatasetDirError, match="base differs"):
        gen_dataset(make_cfg(base_dirs["gemma3"], tmp_path, ds_range="0,2"), [], prompts)


def test_rerun_resumes_from_a_moved_prompt_file_but_not_other_prompts(tmp_path, base_dirs) -> None:
    rows = conversations(4)
    (tmp_path / "a").mkdir()
    first = write_prompts(tmp_path / "a" / "p.jsonl", rows)
    out = tmp_path / "out"
    gen_dataset(make_cfg(base_dirs["llama"], out, ds_range="0,2"), [], first)
    before = rows_of(out)
    (tmp_path / "b").mkdir()
    moved = write_prompts(tmp_path / "b" / "copy.jsonl", rows)  # same prompts, another path: resumes (nothing to do)
    gen_dataset(make_cfg(base_dirs["llama"], out, ds_range="0,2"), [], moved)
    assert rows_of(out) == before and store.read_meta(out)["source"].endswith("copy.jsonl")
    edited = [dict(r) for r in rows]
    edited[1] = {**edited[1], "conversations": [{"role": "user", "content": "something else"}]}
    other = write_prompts(tmp_path / "b" / "other.jsonl", edited)
    with pytest.raises(store.DatasetDirError, match="answers other prompts than this run"):
        gen_dataset(make_cfg(base_dirs["llama"], out, ds_range="0,2"), [], other)
    edited_outside = [dict(r) for r in rows]
    edited_outside[3] = edited[1]  # a change outside the range answered does not matter
    gen_dataset(make_cfg(base_dirs["llama"], out, ds_range="0,2"), [],
                write_prompts(tmp_path / "b" / "outside.jsonl", edited_outside))


def test_ds_range_runs_merge_into_the_single_run(tmp_path, prompts, base_dirs) -> None:
    # ranges aligned with the parts (part_size 2): the same rows decode together, so the merge is bit-identical
    common = ["--modeling.base_model", base_dirs["llama"], "--dataset_generation.max_new_tokens", "8",
              "--dataset_generation.batch_size", "2", "--dataset_generation.part_size", "2",
              "--dataset_generation.dtype", "float32", "--dataset_generation.store_features"]
    for name, rng in [("r0", "0,2"), ("r1", "2,6"), ("all", "")]:
        rng_args = ["--dataset_generation.ds_range", rng] if rng else []
        data_gen_main(["gen_dataset", "--prompts", prompts, *common, *rng_args,
                       "--dataset_generation.output_dir", str(tmp_path / name)])
    assert [r["index"] for r in rows_of(tmp_path / "r1")] == [2, 3, 4, 5]
    data_gen_main(["merge_datasets", str(tmp_path / "m"), str(tmp_path / "r0"), str(tmp_path / "r1")])
    assert rows_of(tmp_path / "m") == rows_of(tmp_path / "all")
    for i in range(6):
        assert torch.equal(store.load_features(tmp_path / "m", i), store.load_features(tmp_path / "all", i))
    assert (tmp_path / "m" / "run_config.json").is_file()
    with pytest.raises(SystemExit):  # only r1: indices 0..1 missing
        data_gen_main(["merge_datasets", str(tmp_path / "m2"), str(tmp_path / "r1")])
    data_gen_main(["merge_datasets", str(tmp_path / "m3"), str(tmp_path / "all"), "--ds_range", "2,6"])
    assert rows_of(tmp_path / "m3") == rows_of(tmp_path / "r1")  # the parts of a run still going, for a stage
    with pytest.raises(SystemExit, match="give START,END"):
        data_gen_main(["merge_datasets", str(tmp_path / "m4"), str(tmp_path / "all"), "--ds_range", "2"])


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_kill_and_resume_gives_the_same_dataset(tmp_path, base_dirs, one_thread) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", conversations(16))
    cfg = make_cfg(base_dirs["gemma3"], tmp_path / "whole", batch_size=2, max_new_tokens=16, store_features=True)
    gen_dataset(cfg, [], prompts)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "specforge_het.data_gen", "gen_dataset", prompts,
           "--modeling.base_model", base_dirs["gemma3"], "--dataset_generation.output_dir", str(out),
           "--dataset_generation.batch_size", "2", "--dataset_generation.max_new_tokens", "16",
           "--dataset_generation.dtype", "float32", "--dataset_generation.store_features"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "parts").glob("part-*.jsonl")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode == -signal.SIGKILL, err
    before = {p.name: p.stat().st_mtime_ns for p in store.part_files(out)}
    assert 1 <= len(before) < 8 and not (out / "dataset").exists()
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert all(store.part_files(out)[0].parent.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())
    assert rows_of(out) == rows_of(tmp_path / "whole")
    for i in range(16):
        assert torch.equal(store.load_features(out, i), store.load_features(tmp_path / "whole", i))
    assert not list(out.rglob(".*.tmp-*"))


def test_cli_gen_probe_view(tmp_path, prompts, base_dirs) -> None:
    out = tmp_path / "out"
    py = [sys.executable, "-m", "specforge_het.data_gen"]
    runs = [
        ["gen_dataset", "--modeling.base_model", base_dirs["llama"], "--dataset_generation.output_dir", str(out),
         "--dataset_generation.max_new_tokens", "8", prompts],
        ["probe_datasets", str(out)],
        ["view", str(out), "--index", "0", "1"],
    ]
    for args in runs:
        res = subprocess.run(py + args, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300)
        assert res.returncode == 0, f"{args[0]}: {res.stderr.decode()[-3000:]}"
    assert "conv-1" in (res.stdout + res.stderr).decode()


def test_a_slot_cache_that_may_not_fit_is_warned_about_once(tmp_path, prompts, base_dirs, capsys, monkeypatch) -> None:
    """When full-length K/V buffers exceed the free memory, gen_dataset says so (naming batch_size) and runs on."""
    from specforge_het.data import batch_gen

    monkeypatch.setattr(batch_gen, "free_memory", lambda device: 1024)
    cfg = make_cfg(base_dirs["llama"], tmp_path / "out", batch_size=2)
    cfg.dataset_generation.part_size = 2
    gen_dataset(cfg, [], prompts)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning: at full length the K/V buffers of 2 slots") == 1
    assert "--dataset_generation.batch_size" in err and rows_of(tmp_path / "out")


def test_a_log_file_gets_one_progress_line_per_committed_part(tmp_path, prompts, base_dirs, capsys) -> None:
    """Written to a file (not a terminal), the live bar shows nothing until the run ends; each committed part
    prints a line with the running counts instead, so a background run's log shows where it is."""
    cfg = make_cfg(base_dirs["llama"], tmp_path / "out", batch_size=2)
    cfg.dataset_generation.part_size = 2
    gen_dataset(cfg, [], prompts)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("committed a part")]
    done = len(rows_of(tmp_path / "out"))
    assert len(lines) == -(-done // 2) >= 2
    assert f"{done} conversations done this run" in lines[-1] and "tok/s" in lines[-1]
