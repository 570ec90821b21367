"""A tiny OpenAI-compatible chat server on loopback, for testing server-mode data generation.

It answers deterministic text per prompt; a last user turn containing FAIL gets HTTP 500, one
containing SLOW is answered only after `slow_s` seconds (past the client's timeout); every request
takes `delay_s` seconds (so concurrency can be observed: `max_in_flight`). Use it as

    with FakeOpenAIServer() as server:   # server.address == "127.0.0.1:<ephemeral port>"
        ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_ID = "fake-base"


def answer_for(messages: list[dict]) -> str:
    """Deterministic answer: depends on the whole conversation so far (so turn 2 depends on turn 1)."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:6]
    return f"The answer {digest} to: {messages[-1]['content'][:24]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's signature)
        pass

    def _send(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        messages = body["messages"]
        last = messages[-1]["content"]
        self.server.record(body)
        # counted while it works, released before the reply is written: a client that has read its reply may
        # send the next request at once, and must not find this one still counted
        with self.server.in_flight():
            reply = self._answer(messages, last, body)
        if reply is not None:
            self._send(*reply)

    def _answer(self, messages: list[dict], last: str, body: dict) -> tuple[int, dict] | None:
        if self.server.delay_s:
            self.server.stopping.wait(self.server.delay_s)
        if "FAIL" in last:
            return 500, {"error": "model exploded on purpose"}
        if "SLOW" in last and self.server.stopping.wait(self.server.slow_s):
            return None  # server stopping: give up without answering
        return 200, {"id": "cmpl-fake", "object": "chat.completion", "model": body.get("model"),
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": answer_for(messages)}}]}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, slow_s: float, delay_s: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.slow_s, self.delay_s = slow_s, delay_s
        self.stopping = threading.Event()
        self.requests: list[dict] = []
        self.busy = self.max_busy = 0
        self._lock = threading.Lock()

    def record(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)

    @contextlib.contextmanager
    def in_flight(self):
        with self._lock:
            self.busy += 1
            self.max_busy = max(self.max_busy, self.busy)
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and left is expected here


class FakeOpenAIServer:
    """Start with `with FakeOpenAIServer() as s:` (or start()/stop()); `s.requests` lists request bodies."""

    def __init__(self, slow_s: float = 5.0, delay_s: float = 0.0):
        self._server = _Server(slow_s, delay_s)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def requests(self) -> list[dict]:
        with self._server._lock:
            return list(self._server.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests this server was handling at once."""
        return self._server.max_busy

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
