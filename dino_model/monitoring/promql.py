"""Asking a running Prometheus over its HTTP API, and checking rule files with `promtool`.

The tests and `dino-mlops monitoring up` need the same few calls: an instant query
(`/api/v1/query`), waiting until a query returns a series (scrapes and rule evaluations are
periodic), and `promtool check|test` with its output kept for the error message.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from dino_model.errors import ServingError
from dino_model.monitoring.prometheus import PROMTOOL_BINARY, find_binary


def query(base_url: str, expr: str, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Result vector of an instant query: [{"metric": {...}, "value": [ts, "str"]}, ...].

    Raises ServingError carrying Prometheus' message when the query is rejected (bad PromQL).
    """
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        raise ServingError(f"Prometheus rejected {expr!r}: {body.get('error', exc)}") from exc
    except OSError as exc:
        raise ServingError(f"cannot reach Prometheus at {base_url} ({exc})") from exc
    if body.get("status") != "success":
        raise ServingError(f"Prometheus rejected {expr!r}: {body.get('error')}")
    return list(body["data"]["result"])


def wait_for_series(base_url: str, expr: str, *, timeout_s: float = 30.0, poll_s: float = 0.5
                    ) -> list[dict[str, Any]]:
    """Poll `expr` until it returns at least one series; ServingError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = query(base_url, expr)
        if result:
            return result
        if time.monotonic() > deadline:
            raise ServingError(f"{expr!r} returned no series from {base_url} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def get_json(base_url: str, path: str) -> dict[str, Any]:
    """GET an API path such as /api/v1/rules or /api/v1/targets; returns its "data"."""
    with urllib.request.urlopen(f"{base_url.rstrip('/')}{path}", timeout=10) as response:
        return json.load(response)["data"]


def promtool(*args: str | Path, timeout_s: float = 120.0) -> str:
    """Run `promtool args...`; returns its output, or ServingError with that output on failure."""
    command = [find_binary(PROMTOOL_BINARY), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise ServingError(f"`promtool {' '.join(map(str, args))}` failed (exit {done.returncode}):\n{output}")
    return output
