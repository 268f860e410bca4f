#!/usr/bin/env bash
# The main job end to end on embedded defaults: data -> pretraining -> evaluation -> (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dino-mlops demo "$@"
