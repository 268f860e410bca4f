#!/usr/bin/env bash
# The main job end to end on embedded defaults: DVC data version -> pretraining -> evaluation ->
# quality gate -> ONNX -> local Triton (left serving over gRPC) -> Prometheus metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# --containers: every step runs in the project image (built here, cached) through Docker
for arg in "$@"; do
  if [ "$arg" = --containers ]; then
    bash scripts/image.sh build >/dev/null
    export "$(bash scripts/image.sh env)"
  fi
done
exec .venv/bin/dino-mlops pipeline run --local "$@"
