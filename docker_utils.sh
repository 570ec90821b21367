#!/usr/bin/env bash
# Build, push and run the specforge_het container images (docker/Dockerfile, docker/Dockerfile.sglang).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX="${SPECFORGE_HET_IMAGE_PREFIX:-specforge-het}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
TAG="${SPECFORGE_HET_IMAGE_TAG:-${VERSION:-dev}}"
CACHE_VOLUME="${SPECFORGE_HET_CACHE_VOLUME:-specforge-het-cache}"
PORT="${SPECFORGE_HET_PORT:-30000}"
DRY_RUN="${DRY_RUN:-0}"
HF_CACHE="${SPECFORGE_HET_HF_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}}"

usage() {
    cat <<EOF
Usage: ./docker_utils.sh [--dry-run] COMMAND [KIND] [ARGS...]

Commands:
  build [cpu|sglang] [OPTS...] build the image (default kind: cpu); OPTS go to docker build
                               cpu:    docker/Dockerfile         specforge_het alone, CPU torch
                               sglang: docker/Dockerfile.sglang  specforge_het + SGLang 0.5.23, CUDA 13
  push  [cpu|sglang]           push the image (the prefix must name a registry: REGISTRY/NAMESPACE/NAME)
  run   [cpu|sglang] [CMD...]  run the image (default command: cpu runs the built-in demo, sglang prints the
                               SGLang demo's help); the current directory is mounted at /workspace, embedded
                               models are cached in the volume \$SPECFORGE_HET_CACHE_VOLUME, the host's
                               Hugging Face cache is mounted (HF_HOME=/hf-cache in the container) and
                               HF_TOKEN is passed on when set (gated bases); sglang adds --gpus all and
                               publishes port \$SPECFORGE_HET_PORT
  help                         this text

Images are named \$SPECFORGE_HET_IMAGE_PREFIX-KIND:\$SPECFORGE_HET_IMAGE_TAG.

Environment:
  SPECFORGE_HET_IMAGE_PREFIX   image name prefix (now: $PREFIX)
  SPECFORGE_HET_IMAGE_TAG      image tag (now: $TAG; default: the version in pyproject.toml)
  SPECFORGE_HET_CACHE_VOLUME   docker volume mounted at /cache (now: $CACHE_VOLUME)
  SPECFORGE_HET_PORT           host port for the SGLang server (now: $PORT)
  SPECFORGE_HET_HF_CACHE       host folder mounted as the Hugging Face cache (now: $HF_CACHE;
                               default \$HF_HOME, else ~/.cache/huggingface)
  HF_TOKEN                     passed into \`run\` containers by name when set (gated models)
  DRY_RUN=1                    print the docker commands instead of running them (same as --dry-run)

Examples:
  ./docker_utils.sh build sglang
  ./docker_utils.sh run sglang python /opt/specforge_het/demo/sglang_inference.py server_mode \\
      smollm2-135m-instruct --draft_model runs/export/smollm2_eagle3 --host 0.0.0.0
  SPECFORGE_HET_IMAGE_PREFIX=ghcr.io/me/specforge-het ./docker_utils.sh --dry-run push cpu
EOF
}

die() {
    echo "docker_utils.sh: $*" >&2
    exit 2
}

# Print the command (shell-quoted) in dry-run mode, run it otherwise.
run_cmd() {
    if [[ -n "$DRY_RUN" && "$DRY_RUN" != "0" ]]; then
        printf '%q ' "$@" | sed 's/ $//'
        printf '\n'
    else
        "$@"
    fi
}

check_kind() {
    case "$1" in
        cpu | sglang) ;;
        *) die "unknown image kind '$1': use cpu or sglang (see --help)" ;;
    esac
}

dockerfile() {
    if [[ "$1" == "cpu" ]]; then echo "docker/Dockerfile"; else echo "docker/Dockerfile.sglang"; fi
}

image() {
    echo "${PREFIX}-$1:${TAG}"
}

cmd_build() {
    local kind="${1:-cpu}"
    check_kind "$kind"
    shift || true
    run_cmd docker build --file "$ROOT/$(dockerfile "$kind")" --tag "$(image "$kind")" "$@" "$ROOT"
}

cmd_push() {
    local kind="${1:-cpu}"
    check_kind "$kind"
    [[ "$PREFIX" == */* ]] || die "SPECFORGE_HET_IMAGE_PREFIX='$PREFIX' names no registry; set it to e.g. ghcr.io/USER/specforge-het"
    run_cmd docker push "$(image "$kind")"
}

cmd_run() {
    local kind="${1:-cpu}"
    check_kind "$kind"
    shift || true
    local args=(docker run --rm)
    if [[ -t 0 && -t 1 ]]; then
        args+=(--interactive --tty)
    fi
    # host user: files written to /workspace stay yours; /cache is world-writable in the image
    args+=(--user "$(id -u):$(id -g)" --env HOME=/tmp --env USER=specforge)
    args+=(--volume "$CACHE_VOLUME:/cache" --volume "$PWD:/workspace" --workdir /workspace)
    # Hugging Face: the host's hub cache is reused (no download per run) and HF_TOKEN, when set, is passed
    # by name only (docker reads the value from this environment; it never appears in the command line)
    if [[ -z "$DRY_RUN" || "$DRY_RUN" == "0" ]]; then
        mkdir -p "$HF_CACHE" 2>/dev/null || true  # else docker creates it owned by root
    fi
    args+=(--volume "$HF_CACHE:/hf-cache" --env HF_HOME=/hf-cache)
    if [[ -n "${HF_TOKEN:-}" ]]; then
        args+=(--env HF_TOKEN)
    fi
    if [[ "$kind" == "sglang" ]]; then
        args+=(--gpus all --ipc host --publish "$PORT:30000")
    fi
    run_cmd "${args[@]}" "$(image "$kind")" "$@"
}

main() {
    while [[ $# -gt 0 && "$1" == -* ]]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; return 0 ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
        shift
    done
    [[ $# -gt 0 ]] || { usage >&2; exit 2; }
    local verb="$1"
    shift
    case "$verb" in
        build) cmd_build "$@" ;;
        push) cmd_push "$@" ;;
        run) cmd_run "$@" ;;
        help) usage ;;
        *) die "unknown command '$verb': use build, push or run (see --help)" ;;
    esac
}

main "$@"
