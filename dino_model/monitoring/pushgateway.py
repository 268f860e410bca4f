"""Reading back what a Pushgateway holds, through its JSON API (`GET /api/v1/metrics`).

Pushing is write-only, but registering a data version must know whether the gateway already
holds the same md5 (so its registration time is kept); that read lives here. Like pushing, a
failed read only logs a warning: monitoring never stops a pipeline step.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

logger = logging.getLogger(__name__)

TIMEOUT_S = 5.0


def gateway_url(address: str) -> str:
    """'host:port' or a full URL -> 'http://host:port' without a trailing slash."""
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


def gateway_groups(address: str) -> list[dict[str, Any]] | None:
    """The gateway's groups as its API returns them, or None (with a warning) when unreachable."""
    url = f"{gateway_url(address)}/api/v1/metrics"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = json.load(response)
    except (OSError, ValueError) as exc:
        logger.warning("could not read %s (%s)", url, exc)
        return None
    return list(body.get("data") or [])


def group_value(group: dict[str, Any], metric: str) -> tuple[dict[str, str], float] | None:
    """(labels, value) of the first sample of `metric` in one group, or None when absent."""
    samples = (group.get(metric) or {}).get("metrics") or []
    if not samples:
        return None
    return dict(samples[0].get("labels") or {}), float(samples[0]["value"])


def current_data_version(address: str, *, job: str = "dino-data") -> tuple[str, float] | None:
    """(md5, registration time) that the gateway holds for `job`, or None when it holds none."""
    for group in gateway_groups(address) or []:
        if group.get("labels") != {"job": job}:
            continue
        info = group_value(group, "dino_data_version_info")
        stamp = group_value(group, "dino_data_version_timestamp_seconds")
        if info is not None and stamp is not None and info[0].get("md5"):
            return info[0]["md5"], stamp[1]
    return None
