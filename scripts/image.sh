#!/usr/bin/env bash
# The project image, built on this machine without any registry; idempotent and cached.
#
#   bash scripts/image.sh build    # daemon up, base image (once), project image (cached layers)
#   bash scripts/image.sh env      # prints DOCKER_HOST=... for the project's Docker daemon
#   bash scripts/image.sh podman   # the same image in podman (for `podman kube play`); prints CONTAINERS_CONF=...
#   bash scripts/image.sh stop     # stops the daemon this script started
#   bash scripts/image.sh push     # pushes DINO_IMAGE to its registry, records the registry's digest
#   bash scripts/image.sh pin [sha256:...]   # references the image by that digest (default: the recorded one)
#
# Every build records what it built under $CACHE/digests/ (one file per image name): `id`, the image ID
# (sha256 of the image's config, which names every layer by content), and after a push `registry`, the
# manifest digest the registry serves. Only the registry digest is ever written into a reference
# (name@sha256:...): a registry, a kubelet and `docker pull` resolve manifest digests, and an image ID is
# not one (docs/operations.md, "Images by digest"). components/_image.py reads `registry` from this file;
# `pin` writes it into k8s/components/images and components/_image.py.
#
# The daemon, its images and the Debian base live under DINO_IMAGE_CACHE (default
# /var/cache/dino-mlops, or ~/.cache/dino-mlops when not root), so a fresh clone rebuilds only the
# code layer: the dependency layer changes only with pyproject.toml. On a cluster the image is built
# from NVIDIA's CUDA runtime instead (the Dockerfile's default BASE_IMAGE) and pushed to a registry;
# see docs/operations.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/dino-mlops; else default_cache=$HOME/.cache/dino-mlops; fi
CACHE=${DINO_IMAGE_CACHE:-$default_cache}
SOCK=$CACHE/docker/docker.sock
export DOCKER_HOST=unix://$SOCK
BASE=dino-mlops-base:bookworm
IMAGE=$(python3 -c 'import os; print(os.environ.get("DINO_IMAGE", "ghcr.io/dino-mlops/dino-mlops:0.1.0"))')

log() { echo "image: $*" >&2; }

need_packages() {
  local missing=""
  for cmd in "$@"; do command -v "${cmd%%:*}" >/dev/null || missing="$missing ${cmd##*:}"; done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    log "missing$missing: install them (Debian/Ubuntu: apt-get install$missing)"; exit 1
  fi
}

daemon_up() {
  need_packages dockerd:docker.io
  docker info >/dev/null 2>&1 && return 0
  mkdir -p "$CACHE/docker"
  log "starting the Docker daemon ($SOCK)"
  # 9>&-: the daemon outlives this script and must not inherit (and so hold) the build lock
  nohup dockerd --iptables=false --bridge=none --host="$DOCKER_HOST" --data-root="$CACHE/docker/data" \
    --exec-root="$CACHE/docker/exec" --pidfile="$CACHE/docker/dockerd.pid" >"$CACHE/docker/dockerd.log" 2>&1 9>&- &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "the Docker daemon did not come up; see $CACHE/docker/dockerd.log"; tail -5 "$CACHE/docker/dockerd.log" >&2
  exit 1
}

daemon_stop() {
  local pidfile=$CACHE/docker/dockerd.pid
  [ -f "$pidfile" ] || { log "no daemon of ours is running"; return 0; }
  local pid; pid=$(cat "$pidfile")
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  rm -f "$pidfile"
}

base_image() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return 0
  need_packages mmdebstrap:mmdebstrap
  local tar=$CACHE/base-bookworm.tar
  if [ ! -s "$tar" ]; then
    # Debian with Python, venv and git; the machine's CA bundle so pip reaches PyPI through the same trust.
    log "making a Debian bookworm base with mmdebstrap (a few minutes, once)"
    mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,git,ca-certificates \
      --customize-hook='upload /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt' \
      bookworm "$tar.part"
    mv "$tar.part" "$tar"
  fi
  docker import "$tar" "$BASE" >/dev/null
}

build() {
  daemon_up
  base_image
  log "building $IMAGE on $BASE"
  DOCKER_BUILDKIT=0 docker build --quiet --network=host --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" . >/dev/null
  # the image a rebuild replaced (7 GB each) is dangling now: drop it, the layers in use stay cached
  docker image prune --force >/dev/null
  record
  docker image inspect --format '{{.Id}}' "$IMAGE"
}

digest_file() { echo "$CACHE/digests/$(printf '%s' "$IMAGE" | tr '/:@' '___')"; }

# the image ID, and the registry's manifest digest when the image was pushed or pulled under its name
record() {
  local id registry file
  file=$(digest_file)
  id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
  registry=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$IMAGE" \
    | sed -n "s|^${IMAGE%:*}@||p" | head -1)
  mkdir -p "$(dirname "$file")"
  { echo "image $IMAGE"; echo "id $id"; [ -z "$registry" ] || echo "registry $registry"; } > "$file.part"
  mv "$file.part" "$file"
  log "recorded $file (id $id${registry:+, registry $registry})"
}

push() {
  daemon_up
  docker image inspect "$IMAGE" >/dev/null 2>&1 || { log "no image $IMAGE here: build it first"; exit 1; }
  docker push --quiet "$IMAGE" >/dev/null
  record
  sed -n 's/^registry //p' "$(digest_file)"
}

# name@digest everywhere this repository names the image: the kustomize images entry and IMAGE's default
pin() {
  local digest=${1:-}
  [ -n "$digest" ] || digest=$(sed -n 's/^registry //p' "$(digest_file)" 2>/dev/null)
  if ! [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
    log "no registry digest for $IMAGE (push it first, or pass sha256:<64 hex digits>); got '${digest}'"; exit 1
  fi
  python3 - "$digest" <<'PY'
import re, sys
from pathlib import Path
digest = sys.argv[1]
kust = Path("k8s/components/images/kustomization.yaml")
text = re.sub(r"\n    digest: sha256:[0-9a-f]{64}", "", kust.read_text())
text, n = re.subn(r"(- name: dino-mlops\n    newName: \S+\n    newTag: \S+)", rf"\1\n    digest: {digest}", text)
image = Path("components/_image.py")
code, m = re.subn(r'^PINNED_DIGEST = "[^"]*"', f'PINNED_DIGEST = "{digest}"', image.read_text(), flags=re.M)
if n != 1 or m != 1:
    sys.exit("image: pin: the dino-mlops entry or PINNED_DIGEST was not found where expected")
kust.write_text(text)
image.write_text(code)
PY
  log "pinned $digest in k8s/components/images/kustomization.yaml and components/_image.py"
}

# Podman (Debian's 4.3 with runc) for playing Kubernetes manifests: the settings this machine needs
# (no default ulimits, no pids limit, runc: crun fails on hybrid cgroups) in a file of our own.
podman_image() {
  need_packages podman:podman runc:runc catatonit:catatonit slirp4netns:slirp4netns
  local conf=$CACHE/podman/containers.conf
  mkdir -p "$CACHE/podman"
  printf '[containers]\ndefault_ulimits = []\npids_limit = 0\n\n[engine]\nruntime = "runc"\n' > "$conf"
  export CONTAINERS_CONF=$conf
  build >/dev/null
  local id stamp=$CACHE/podman/loaded-image-id
  id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$id" ] || ! podman image exists "$IMAGE"; then
    log "copying $IMAGE into podman's storage"
    docker save "$IMAGE" | podman load --quiet >/dev/null
    podman image prune --force >/dev/null  # the copy it replaced
    echo "$id" > "$stamp"
  fi
  echo "CONTAINERS_CONF=$conf"
}

# one build or copy at a time on this machine (tests and people may call it together)
mkdir -p "$CACHE"
exec 9>"$CACHE/image.lock"
if ! flock --timeout "${DINO_IMAGE_LOCK_TIMEOUT:-1800}" 9; then
  log "another image build or copy held $CACHE/image.lock for ${DINO_IMAGE_LOCK_TIMEOUT:-1800} s; holders: $(fuser "$CACHE/image.lock" 2>/dev/null || echo unknown)"
  exit 1
fi

case "${1:-build}" in
  build) build ;;
  env) echo "DOCKER_HOST=$DOCKER_HOST" ;;
  daemon) daemon_up; echo "DOCKER_HOST=$DOCKER_HOST" ;;
  podman) podman_image ;;
  stop) daemon_stop ;;
  push) push ;;
  pin) pin "${2:-}" ;;
  *) echo "usage: scripts/image.sh [build|daemon|env|podman|stop|push|pin [sha256:...]]" >&2; exit 2 ;;
esac
