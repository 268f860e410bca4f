#!/usr/bin/env bash
# The test command: bootstrap, lint, then the whole test suite (1,548 tests, about 30 minutes on 2 CPU cores with the container
# tests; the first run on a machine also builds the project image, about 12 minutes, cached afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
# every test, the slow end-to-end ones included (a plain `pytest` leaves those out); later -m options win
exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
