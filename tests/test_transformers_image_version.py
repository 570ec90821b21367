"""The SGLang image (docker/Dockerfile.sglang) runs an older transformers than this venv: its lock file pins
what sglang 0.5.23 resolves to. This test installs exactly that version (no dependencies, into a cache
folder; PyPI must be reachable, as for `make setup`) and runs the version-sensitive tests under it: the
KV-cache keyword of every family's layers, the SDPA plans through whole tiny bases, and export to the
engines' formats. A release that renames or drops what we call fails here before it fails in the image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "docker" / "requirements-sglang.txt"
SENSITIVE = ["tests/test_hf_compat.py", "tests/test_sdpa_plan.py", "tests/test_export_engines.py"]


def image_transformers() -> str:
    found = re.findall(r"^transformers==(\S+)$", LOCK.read_text(), flags=re.M)
    assert len(found) == 1, f"{LOCK} must pin transformers exactly once"
    return found[0]


def installed_copy(version: str) -> Path:
    """transformers==version alone, in the specforge_het cache (reused across runs)."""
    cache = Path(os.environ.get("SPECFORGE_HET_CACHE", Path.home() / ".cache" / "specforge_het"))
    target = cache / "transformers-versions" / version
    if not (target / "transformers" / "__init__.py").is_file():
        tmp = target.with_name(f".{version}.tmp-{os.getpid()}")
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp),
                              f"transformers=={version}"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (f"could not install transformers=={version} from PyPI (needed to test the "
                                     f"SGLang image's version):\n{res.stderr[-2000:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a concurrent run got there first
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
        else:
            os.replace(tmp, target)
    return target


@pytest.mark.slow
def test_version_sensitive_tests_pass_on_the_sglang_images_transformers():
    version = image_transformers()
    env = {**os.environ, "PYTHONPATH": str(installed_copy(version))}
    seen = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert seen.stdout.strip() == version, f"the copy did not take precedence: {seen.stdout} {seen.stderr[-500:]}"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SENSITIVE], env=env,
                         capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert res.returncode == 0, f"under transformers {version}:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert re.search(r"\d+ passed", res.stdout), res.stdout[-2000:]
