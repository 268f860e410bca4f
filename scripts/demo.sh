#!/usr/bin/env bash
# The main job end to end on embedded defaults: DVC data version -> pretraining -> evaluation ->
# quality gate -> ONNX -> local Triton (left serving over gRPC) -> Prometheus metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dino-mlops pipeline run --local "$@"
