"""Generation through running SGLang (or any OpenAI-compatible) servers, standard library only.

Requests go round-robin over the servers (`POST http://host:port/v1/chat/completions`), at most
`concurrency` in flight per server, each with a timeout; a failed request is retried on the next
servers (`retries` times) before the conversation is given up for this run.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from specforge_het.data.gen_common import commit, finalize, progress_bar


class RequestFailed(RuntimeError):
    """All tries of one request failed; `server` is the last one tried."""

    def __init__(self, server: str, error: str):
        super().__init__(f"{server}: {error}")
        self.server, self.error = server, error


def parse_server(spec: str) -> str:
    """'host:port' (or 'http://host:port') -> 'http://host:port', failing with the expected form."""
    text = spec.strip().rstrip("/")
    bare = text.split("://", 1)[-1]
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"server '{spec}' is not host:port (e.g. 127.0.0.1:30000). "
                         "Fix --dataset_generation.servers.")
    return text if "://" in text else f"http://{bare}"


def _post_json(url: str, payload: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http URL built from host:port)
        return json.loads(resp.read().decode())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        body = exc.read().decode(errors="replace")[:200]
        return f"HTTP {exc.code}: {body}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class ServerPool:
    """Round-robin, bounded-concurrency chat completions over several servers."""

    servers: list[str]
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 2
    model: str = ""
    _urls: list[str] = field(init=False)
    _gates: dict[str, threading.BoundedSemaphore] = field(init=False)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("ServerPool needs at least one server (host:port).")
        if self.concurrency < 1:
            raise ValueError("--dataset_generation.concurrency must be >= 1.")
        self._urls = [parse_server(s) for s in self.servers]
        self._gates = {u: threading.BoundedSemaphore(self.concurrency) for u in self._urls}
        self._next = itertools.cycle(range(len(self._urls)))
        self._lock = threading.Lock()

    @property
    def max_workers(self) -> int:
        return self.concurrency * len(self._urls)

    def _pick(self) -> str:
        with self._lock:
            return self._urls[next(self._next)]

    def model_name(self) -> str:
        """The served model's id from GET /v1/models on the first server; 'default' if unavailable."""
        if not self.model:
            try:
                with urllib.request.urlopen(f"{self._urls[0]}/v1/models", timeout=self.timeout_s) as resp:  # noqa: S310
                    self.model = json.loads(resp.read().decode())["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError):
                self.model = "default"
        return self.model

    def chat(self, messages: list[dict], max_tokens: int, temperature: float, seed: int | None = None) -> str:
        """The assistant's answer to `messages`; raises RequestFailed after 1 + retries failed tries."""
        payload = {"model": self.model_name(), "messages": messages, "max_tokens": max_tokens,
                   "temperature": temperature}
        if seed is not None and temperature > 0:
            payload["seed"] = seed
        error, url = "", self._urls[0]
        for _ in range(1 + self.retries):
            url = self._pick()
            with self._gates[url]:
                try:
                    out = _post_json(f"{url}/v1/chat/completions", payload, self.timeout_s)
                    return str(out["choices"][0]["message"]["content"] or "")
                except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as e:
                    error = _describe(e)
        raise RequestFailed(url.split("://", 1)[-1], error)

    def map(self, fn: Callable[[dict], dict], items: list[dict], on_done: Callable[[dict], None]) -> None:
        """Run `fn(item)` for every item on `max_workers` threads; `on_done(result)` in this thread."""
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                for fut in as_completed(futures):
                    on_done(fut.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # in-flight requests end by their timeout
                raise


def describe_from_config(name: str, config) -> dict:
    """The base's identity (as `BaseModel.describe`) from its config alone: no weights loaded."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"name": name, "model_type": text.model_type, "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size, "num_layers": text.num_hidden_layers}


class ServerEngine:
    """Generation through servers; the base's tokenizer and config are loaded here, never its weights."""

    def __init__(self, cfg):
        from transformers import AutoConfig, AutoTokenizer

        from specforge_het.assets import resolve_model_path

        self.cfg, self.g = cfg, cfg.dataset_generation
        path = resolve_model_path(cfg.modeling.base_model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self._describe = describe_from_config(cfg.modeling.base_model, AutoConfig.from_pretrained(path))
        self.num_layers = self._describe["num_layers"]
        self.pool = ServerPool(list(self.g.servers), self.g.concurrency, self.g.timeout_s)

    def describe(self) -> dict:
        return self._describe

    def answer(self, conv):
        """All turns of one conversation, each asked after the server's answer to the previous one."""
        try:
            for k in range(len(conv.users)):
                conv.answers.append(self.pool.chat(conv.messages(k), self.g.max_new_tokens, self.g.temperature,
                                                   seed=self.cfg.inference.seed + conv.index))
        except RequestFailed as e:
            conv.failed = f"{e.server}: {e.error}"
        return conv

    def run(self, out, todo: list, layers: list[int], report, stats) -> None:
        """Answer `todo` concurrently; commit finished conversations in parts of `batch_size`."""
        buffer: list = []

        def flush() -> None:
            rows, skipped = finalize(self.tokenizer, buffer, self.g.max_length, report)
            commit(out, buffer, rows, skipped, None, stats)
            buffer.clear()

        with progress_bar() as bar:
            task = bar.add_task(f"asking {len(self.pool.servers)} server(s)", total=len(todo), note="")

            def on_done(conv) -> None:
                conv.new_tokens = sum(len(self.tokenizer(a, add_special_tokens=False).input_ids) for a in conv.answers)
                buffer.append(conv)
                bar.update(task, advance=1, note=f"{stats.failed + sum(bool(c.failed) for c in buffer)} failed")
                if len(buffer) >= self.g.batch_size:
                    flush()

            self.pool.model_name()
            self.pool.map(self.answer, todo, on_done)
            if buffer:
                flush()
