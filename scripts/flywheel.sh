#!/usr/bin/env bash
# The data flywheel end to end on this machine (pipelines/flywheel_demo.py): a digits model serves on a
# real tritonserver, a shifted stream (recoloured digits) is sent as image bytes and captured by the
# server, the drift alert fires in a real Prometheus, the capture store becomes a new DVC data version,
# retraining starts from the served weights, the gate checks the fixed held-out set, the new version
# is deployed, the drift gauge is read again, and a control retrained without the captured images is scored.
# Everything it starts is stopped when it ends; the report is <work>/flywheel.json.
#   bash scripts/flywheel.sh                                  # runs/flywheel (about 8 minutes on 2 cores)
#   bash scripts/flywheel.sh --work /tmp/fw --alert-for 2s    # the test's run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec .venv/bin/python -m pipelines.flywheel_demo "$@"
