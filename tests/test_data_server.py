"""Server mode of gen_dataset against a fake OpenAI-compatible server on loopback (tests/fake_openai_server.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fake_openai_server import MODEL_ID, FakeOpenAIServer, answer_for

from specforge_het.config import Config, ConfigError
from specforge_het.data import store
from specforge_het.data.generate import gen_dataset
from specforge_het.data.server_client import RequestFailed, ServerPool, parse_server

USERS = {
    "ok-0": ["What is the capital of France?"],
    "two-turns": ["Write a short poem about the sea.", "Now make it rhyme."],
    "fails": ["Please FAIL on this one."],
    "slow": ["This one is SLOW to answer."],
    "ok-4": ["Explain how a transformer layer works."],
}


@pytest.fixture
def server():
    with FakeOpenAIServer(slow_s=5.0) as s:
        yield s


@pytest.fixture
def prompts(tmp_path: Path) -> str:
    path = tmp_path / "prompts.jsonl"
    rows = []
    for cid, users in USERS.items():
        turns = []
        for u in users:
            turns += [{"role": "user", "content": u}, {"role": "assistant", "content": "stale answer"}]
        rows.append({"id": cid, "conversations": turns})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def server_cfg(base_dir: str, out: Path, servers: list[str]) -> Config:
    cfg = Config()
    cfg.modeling.base_model = base_dir
    g = cfg.dataset_generation
    g.output_dir, g.servers, g.concurrency, g.timeout_s, g.batch_size = str(out), servers, 2, 0.4, 2
    g.max_new_tokens, g.system_prompt = 16, "Be nice."
    return cfg


def test_server_mode_answers_records_failures_and_retries_them(tmp_path, prompts, server, base_dirs, tok_a) -> None:
    out = tmp_path / "out"
    cfg = server_cfg(base_dirs["llama"], out, [server.address, server.address])
    gen_dataset(cfg, [], prompts)
    ds, meta = store.load_dataset_dir(out)
    assert sorted(ds["id"]) == ["ok-0", "ok-4", "two-turns"] and meta["mode"] == "server"
    two = [b for b in server.requests if b["messages"][1]["content"].startswith("Write a short poem")]
    assert [len(b["messages"]) for b in two] == [2, 4]  # turn 2 is asked after the server's own answer to turn 1
    first_answer = answer_for(two[0]["messages"])
    assert two[1]["messages"][2] == {"role": "assistant", "content": first_answer}
    assert all(b["model"] == MODEL_ID and b["max_tokens"] == 16 and b["temperature"] == 0.0 for b in server.requests)
    row = ds[ds["id"].index("two-turns")]
    masked = tok_a.decode([t for t, m in zip(row["input_ids"], row["loss_mask"]) if m], skip_special_tokens=True)
    assert masked == first_answer + answer_for(two[1]["messages"])  # tokenised locally, loss on the answers only
    assert "stale answer" not in tok_a.decode(row["input_ids"])
    failed = {e["id"]: e for e in store.read_errors(out) if e["kind"] == "request_failed"}
    assert set(failed) == {"fails", "slow"}
    assert "HTTP 500" in failed["fails"]["error"] and "timed out" in failed["slow"]["error"]
    assert failed["fails"]["error"].startswith(server.address)
    assert sum("FAIL" in b["messages"][-1]["content"] for b in server.requests) == 3  # 1 try + 2 retries
    before = len(server.requests)
    gen_dataset(cfg, [], prompts)  # rerun: only the failed conversations are asked again
    again = server.requests[before:]
    assert sorted({b["messages"][-1]["content"] for b in again}) == sorted(USERS["fails"] + USERS["slow"])
    assert len(store.load_dataset_dir(out)[0]) == 3


def test_server_mode_refuses_stored_features(tmp_path, prompts, base_dirs) -> None:
    cfg = server_cfg(base_dirs["llama"], tmp_path, ["127.0.0.1:9"])
    cfg.dataset_generation.store_features = True
    with pytest.raises(ConfigError, match="stored features need the base in this process"):
        gen_dataset(cfg, [], prompts)


def test_pool_round_robin_and_bounded_concurrency() -> None:
    with FakeOpenAIServer(delay_s=0.05) as a, FakeOpenAIServer(delay_s=0.05) as b:
        pool = ServerPool([a.address, b.address], concurrency=2, timeout_s=5.0)
        results: list[dict] = []
        lock = threading.Lock()

        def ask(item: dict) -> dict:
            return {"i": item["i"], "text": pool.chat([{"role": "user", "content": f"q{item['i']}"}], 4, 0.0)}

        def done(r: dict) -> None:
            with lock:
                results.append(r)

        pool.map(ask, [{"i": i} for i in range(16)], done)
        assert sorted(r["i"] for r in results) == list(range(16))
        assert all(r["text"] == answer_for([{"role": "user", "content": f"q{r['i']}"}]) for r in results)
        assert len(a.requests) == len(b.requests) == 8
        assert a.max_in_flight <= 2 and b.max_in_flight <= 2 and a.max_in_flight + b.max_in_flight >= 3


def test_unreachable_server_fails_after_retries() -> None:
    dead = FakeOpenAIServer().start()
    address = dead.address
    dead.stop()
    pool = ServerPool([address], concurrency=1, timeout_s=1.0, retries=2, model="m")
    with pytest.raises(RequestFailed, match=f"{address}: unreachable"):
        pool.chat([{"role": "user", "content": "hi"}], 4, 0.0)


@pytest.mark.parametrize("spec, url", [("127.0.0.1:30000", "http://127.0.0.1:30000"),
                                       ("http://gpu-7:8000/", "http://gpu-7:8000")])
def test_parse_server(spec: str, url: str) -> None:
    assert parse_server(spec) == url


def test_parse_server_names_the_expected_form() -> None:
    with pytest.raises(ValueError, match=r"'gpu-7' is not host:port .*--dataset_generation.servers"):
        parse_server("gpu-7")
