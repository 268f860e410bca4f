#!/usr/bin/env bash
# The main job end to end on embedded defaults: DVC data version -> pretraining -> evaluation ->
# quality gate -> ONNX -> local Triton (left serving over gRPC) -> Prometheus metrics.
# --containers: every step runs in the project image (built here, cached) through Docker; a Docker
# daemon this script starts is stopped again at the end, one that was running is left as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
containers=no
for arg in "$@"; do
  [ "$arg" = --containers ] && containers=yes
done
if [ "$containers" = yes ]; then
  export "$(bash scripts/image.sh env)"
  if docker info >/dev/null 2>&1; then
    echo "demo: using the Docker daemon already running at $DOCKER_HOST (left running)" >&2
  else
    trap 'bash scripts/image.sh stop && echo "demo: stopped the Docker daemon it started" >&2' EXIT
  fi
  bash scripts/image.sh build >/dev/null
fi
.venv/bin/dino-mlops pipeline run --local "$@"
echo "demo: left running: the local Triton server (stop it with .venv/bin/dino-mlops pipeline stop-local)" >&2
