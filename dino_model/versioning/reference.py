"""A data version by reference: what a pipeline hands from step to step instead of the data's bytes.

On a KFP backend every output artifact is uploaded to the artifact store and downloaded again by
each consumer; a data set passed that way costs its full size per step and per run. A reference is
a few hundred bytes of JSON: the DVC remote (URL and S3 endpoint), the version's md5, the git
revision that records it and the data repository, with the file count and size. Each step that
needs the images materialises them from the remote itself (materialize.py), by md5 alone: the
remote is content-addressed, so no git clone is needed after the data step.

The reference travels as a plain string parameter, never as an artifact: KFP's cache key holds a
parameter's value but an artifact's identity, and an artifact made by the never-cached data step is
new in every run, which would make every consumer miss the cache. The same data on the same remote
gives the same string, so pretraining and evaluation are reused when nothing else changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dino_model.errors import DataError
from dino_model.versioning.versions import MD5_PATTERN

logger = logging.getLogger(__name__)

REFERENCE_FIELDS = ("md5", "remote_url", "endpoint_url", "git_rev", "repository", "nfiles", "size")


@dataclass(frozen=True)
class DataReference:
    """Where one data version is, and which one.

    Attributes:
        md5: md5 of the version's file listing (ends in `.dir`): the identity of the data.
        remote_url: the DVC remote that holds it (`s3://bucket/prefix`, or a folder every step mounts).
        endpoint_url: S3-compatible endpoint of an s3:// remote; "" for AWS or a folder.
        git_rev: the last commit that changed data.dvc to this version ("" for an md5 no commit records);
            stable across commits that do not touch the data, so it does not break the cache.
        repository: the data repository's URL, without credentials (lineage only).
        nfiles: number of files in the version.
        size: total bytes of the files.
    """

    md5: str
    remote_url: str
    endpoint_url: str = ""
    git_rev: str = ""
    repository: str = ""
    nfiles: int = 0
    size: int = 0

    def __post_init__(self) -> None:
        if not MD5_PATTERN.match(self.md5) or not self.md5.endswith(".dir"):
            raise DataError(f"data reference names md5 {self.md5!r}, which is not a DVC directory md5 "
                            "(32 hex digits and .dir); pass the data step's `reference` output unchanged")
        if not self.remote_url:
            raise DataError(f"data reference for {self.md5} names no DVC remote; set the pipeline's dvc_remote "
                            "(s3://bucket/prefix or a mounted folder)")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal references are equal strings, for the cache key."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DataReference:
        """The reference a data step wrote; DataError in one line when it is not one."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"data reference is not JSON ({exc}): {str(text)[:80]!r}") from None
        if not isinstance(doc, dict) or not {"md5", "remote_url"} <= set(doc):
            raise DataError(f"data reference lacks md5 or remote_url: {str(text)[:120]!r}")
        unknown = set(doc) - set(REFERENCE_FIELDS)
        if unknown:
            raise DataError(f"data reference has unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**doc)

    @property
    def short(self) -> str:
        return self.md5[:12]

    def lineage(self) -> dict[str, Any]:
        """What the model's lineage records about its data."""
        return {"data_version": self.md5, "data_revision": self.git_rev, "data_repository": self.repository}


def reference_of(md5: str, *, remote_url: str, endpoint_url: str | None = None, git_rev: str | None = None,
                 repository: str = "", nfiles: int | None = None, size: int | None = None) -> DataReference:
    """A reference from what a data step resolved (None fields become "" or 0)."""
    return DataReference(md5=md5, remote_url=portable_remote(remote_url), endpoint_url=endpoint_url or "",
                         git_rev=git_rev or "", repository=repository, nfiles=nfiles or 0, size=size or 0)


def portable_remote(url: str) -> str:
    """`url` as every step can use it: URLs unchanged, a folder made absolute (it must be mounted there)."""
    if "://" in url and not url.startswith("file://"):
        return url
    return str(Path(url.removeprefix("file://")).expanduser().resolve())
