"""The one container image every component runs in: one setting, by tag or by digest.

Built from the repository's Dockerfile; k8s/ manifests use the same name, tag and pinned digest (a test
keeps them equal). Override with DINO_IMAGE when compiling a pipeline for your own registry.

A tag can be moved to other bytes; a digest cannot. So the reference is `name:tag@sha256:...` whenever a
registry manifest digest is known, in this order: DINO_IMAGE_DIGEST; else, on a machine where
`scripts/image.sh` built or pushed that image name, the registry digest its push recorded (none after a
local build: the tag then names that build, which a pinned digest would not); else PINNED_DIGEST (written
by `scripts/image.sh pin`, for the default name only). Without one it stays `name:tag`: a build without a
registry has no manifest digest, and its image ID is not a reference a registry or kubelet resolves
(docs/operations.md, "Images by digest").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_IMAGE = "ghcr.io/dino-mlops/dino-mlops:0.1.0"
PINNED_DIGEST = ""  # sha256:<hex> of DEFAULT_IMAGE in its registry; `scripts/image.sh pin` writes it
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImageDigestError(ValueError):
    """A digest setting that is not sha256:<64 lowercase hex digits>."""


def image_cache() -> Path:
    """scripts/image.sh's cache folder: DINO_IMAGE_CACHE, else its default for this user."""
    if env := os.environ.get("DINO_IMAGE_CACHE"):
        return Path(env)
    return Path("/var/cache/dino-mlops") if os.geteuid() == 0 else Path.home() / ".cache" / "dino-mlops"


def record(image: str, cache: Path | None = None) -> dict[str, str] | None:
    """What scripts/image.sh recorded for `image` on this machine (`id`, and `registry` after a push)."""
    path = (cache or image_cache()) / "digests" / re.sub(r"[/:@]", "_", image)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(" ", 1) for line in lines if " " in line)
    return fields if fields.get("image") == image else None


def recorded_digest(image: str, cache: Path | None = None) -> str | None:
    """The registry digest scripts/image.sh recorded for `image` (after a push), if any."""
    fields = record(image, cache) or {}
    return _checked(fields["registry"], f"the record of {image}") if "registry" in fields else None


def reference(image: str, digest: str | None) -> str:
    """`name:tag@digest` as kustomize writes it (the tag for people, the digest decides what is pulled), or
    `image` unchanged without a digest or when it names one already."""
    if digest is None or "@" in image:
        return image
    return f"{image}@{digest}"


def resolve(env: dict[str, str] | None = None, cache: Path | None = None) -> str:
    """The image reference the components run, from the environment and the records above."""
    env = dict(os.environ) if env is None else env
    image = env.get("DINO_IMAGE") or DEFAULT_IMAGE
    if explicit := env.get("DINO_IMAGE_DIGEST"):
        return reference(image, _checked(explicit, "DINO_IMAGE_DIGEST"))
    if record(image, cache) is not None:  # built (or pushed) here: the name means that build on this machine
        return reference(image, recorded_digest(image, cache))
    pinned = _checked(PINNED_DIGEST, "PINNED_DIGEST") if PINNED_DIGEST and image == DEFAULT_IMAGE else None
    return reference(image, pinned)


def _checked(digest: str, source: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ImageDigestError(f"{source}: {digest!r} is not a digest (sha256: and 64 lowercase hex digits)")
    return digest


IMAGE = resolve()
