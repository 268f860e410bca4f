#!/usr/bin/env bash
# The project image's dependency locks: every package the Dockerfile installs, pinned, with the sha256 of
# every file PyPI has for that version (`pip install --require-hashes` refuses anything else).
#
#   bash scripts/lock.sh             # re-resolve after a pyproject.toml change, keeping the pins already locked
#   bash scripts/lock.sh --upgrade   # newest versions pyproject.toml allows (then rebuild and run the tests)
#
# One lock per Python of a supported base: 3.11 (Debian bookworm, scripts/image.sh) and 3.12 (Ubuntu 24.04
# in NVIDIA's CUDA runtime, the Dockerfile's default); the Dockerfile picks the one of the base's python3.
# Linux x86_64 with glibc 2.35 or newer (nvidia-pytriton ships manylinux_2_35 wheels only). The extras are
# the Dockerfile's; tests/k8s/test_image.py checks both locks against pyproject.toml and the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-.venv/bin/uv}
EXTRAS=(s3 cluster gpu-aug)
[ -x "$UV" ] || { echo "lock: $UV not found: .venv/bin/pip install 'uv>=0.9' (the lock extra of pyproject.toml)" >&2; exit 1; }

for py in 3.11 3.12; do
  "$UV" --quiet pip compile pyproject.toml requirements/image-build.in "${EXTRAS[@]/#/--extra=}" \
    --generate-hashes --python-platform x86_64-manylinux_2_35 --python-version "$py" \
    --custom-compile-command "bash scripts/lock.sh" --output-file "requirements/image-py${py/./}.lock" "$@"
done
