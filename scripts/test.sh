#!/usr/bin/env bash
# The test command: bootstrap, lint, then the whole test suite (about 8 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
