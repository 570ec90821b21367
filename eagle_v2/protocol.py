"""The runner's side of the JSON protocol with eagle_v2/reference_worker.py.

The worker runs in its own virtual environment (eagle-llm 1.2.1 + transformers 4.36): a request
goes to its stdin as one JSON object, the response comes back as one stdout line that starts with
MARKER; tensors travel as safetensors files in the request's work_dir. Nothing is pickled.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PROTOCOL = 1
MARKER = "@@EAGLE_BRIDGE@@ "
TASKS = ("env", "weights", "features", "draft_forward", "tree", "generate")
WORKER = Path(__file__).resolve().parent / "reference_worker.py"
DEFAULT_REF_PYTHON = "/work/venv_eagle/bin/python"


class ReferenceUnavailable(RuntimeError):
    """The reference environment cannot be started (missing venv, crash, bad response)."""


@dataclass
class Request:
    base_path: str
    draft_path: str  # a folder in the original EAGLE layout (config.json + model.safetensors)
    work_dir: str
    prompts: list[list[int]] = field(default_factory=list)
    max_new_tokens: int = 64
    tasks: tuple[str, ...] = TASKS
    inputs: str = "inputs.safetensors"
    rope_theta_shim: bool = False
    threads: int = 1
    warmup: bool = True

    def to_json(self) -> str:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown reference tasks {unknown}; choose from {list(TASKS)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not p or not all(isinstance(t, int) for t in p) for p in self.prompts):
            raise ValueError("every prompt must be a non-empty list of int token ids")
        body = {"protocol": PROTOCOL, **self.__dict__, "tasks": list(self.tasks)}
        return json.dumps(body)


def parse_response(stdout: str) -> dict:
    """The worker's response from its stdout (the last MARKER line); raises ReferenceUnavailable."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(MARKER)]
    if not lines:
        tail = stdout.strip().splitlines()[-3:]
        raise ReferenceUnavailable(f"the reference worker printed no response line; last output: {tail}")
    try:
        resp = json.loads(lines[-1][len(MARKER):])
    except json.JSONDecodeError as exc:
        raise ReferenceUnavailable(f"the reference worker's response is not JSON: {exc.msg}") from None
    if not isinstance(resp, dict) or resp.get("protocol") != PROTOCOL:
        got = resp.get("protocol") if isinstance(resp, dict) else type(resp).__name__
        raise ReferenceUnavailable(f"reference worker speaks protocol {got!r}, this runner {PROTOCOL}: update both together")
    resp.setdefault("errors", {})
    resp.setdefault("results", {})
    return resp


def check_ref_python(ref_python: str) -> Path:
    path = Path(ref_python)
    if not path.is_file():
        raise ReferenceUnavailable(
            f"reference python '{ref_python}' not found. Create the reference environment with "
            f"`bash eagle_v2/setup_reference_env.sh {path.parent.parent}` or pass --ref_python.")
    return path


def run_worker(ref_python: str, request: Request, timeout_s: float = 3600.0) -> dict:
    """Run the worker in the reference venv and return its parsed response."""
    exe = check_ref_python(ref_python)
    Path(request.work_dir).mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(request.threads), "PYTHONWARNINGS": "ignore",
           "HOME": str(Path.home()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        proc = subprocess.run([str(exe), str(WORKER)], input=request.to_json(), capture_output=True, text=True,  # noqa: S603
                              timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ReferenceUnavailable(f"the reference worker ran past {timeout_s:.0f} s; lower --max_new_tokens or --prompts") from None
    (Path(request.work_dir) / "worker_stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0 and MARKER not in proc.stdout:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise ReferenceUnavailable(f"the reference worker exited with {proc.returncode}: {tail}")
    return parse_response(proc.stdout)
