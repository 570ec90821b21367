#!/usr/bin/env bash
# Container helpers for the SGLang evaluation image: planned (issue 6), not built yet.
set -euo pipefail
echo "docker_utils.sh: the container build is not implemented yet (see the README's status section)." >&2
exit 1
