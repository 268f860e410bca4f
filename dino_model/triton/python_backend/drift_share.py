"""The drift step's latest window, handed to the capture step of the same server through a small JSON file.

The capture step (the first step of `<model>_images`) offers an image before the drift step (the
ensemble's last) has seen it, and the two run in different stub processes, so the score that a
captured image records is the one of the latest window the drift step completed. The drift step
writes it here when capture is switched on; the capture step reads it.

Where: `<temporary directory>/dino-drift-<server pid>-<model>.json`, the naming of the drift gauges'
lock file. Every Python-backend stub is a child of its tritonserver, so `os.getppid()` is the same in
both steps of one server and differs between servers sharing a host or a /tmp; the file is local to
the pod (a capture store may be s3://, and the model repository may be read-only), and a server that
restarts starts with no window (its pid is new). Nothing needs configuring.

The record: {"version", "mmd2", "threshold", "ratio", "time"}, ratio = mmd2 / threshold, what the
drift alert compares with 1 (k8s/base/monitoring/prometheusrule.yaml); time in seconds since the epoch.
Written by a rename over the file (a reader sees the old record or the new one, never a mix; the
package's dino_model/runtime/atomic.py does the same, with fsyncs that a per-boot file does not need).

Standard library only: Triton's stub imports this from the version folder, with no project code.
"""

import json
import os
import tempfile
import time
from pathlib import Path

MAX_AGE_S = 3600.0  # an older record is not this server's current window (a drift step that stopped)
REREAD_S = 1.0  # the reader looks at the file at most this often


def share_path(model, directory=None, server_pid=None):
    """The file of `model`'s latest window in this server (see the module docstring)."""
    directory = tempfile.gettempdir() if directory is None else directory
    server_pid = os.getppid() if server_pid is None else server_pid
    return Path(directory) / f"dino-drift-{server_pid}-{model}.json"


def window_record(version, mmd2, threshold, now=None):
    """The record of a completed window of `version` (ratio: mmd2 / threshold)."""
    return {"version": str(version), "mmd2": float(mmd2), "threshold": float(threshold),
            "ratio": float(mmd2) / float(threshold), "time": time.time() if now is None else now}


def write_window(path, record):
    """Replace `path` with `record` as JSON, by a rename from a temporary in the same folder."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        Path(name).replace(path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def remove_window(path):
    """No window to share any more (a monitor that stopped computing, a step unloading)."""
    Path(path).unlink(missing_ok=True)


class WindowReader:
    """The ratio of the latest shared window of a version; the file is looked at once per REREAD_S at most."""

    def __init__(self, path, clock=time.monotonic, wall_clock=time.time):
        self.path = Path(path)
        self._clock, self._wall_clock = clock, wall_clock
        self._looked_at, self._mtime, self._record = None, None, None

    def score(self, version):
        """mmd2 / threshold of the latest window of `version`, or None (no window yet, another version, too old)."""
        record = self._latest()
        if record is None or record.get("version") != str(version):
            return None
        if self._wall_clock() - float(record.get("time", 0.0)) > MAX_AGE_S:
            return None
        return float(record["ratio"])

    def _latest(self):
        now = self._clock()
        if self._looked_at is not None and now - self._looked_at < REREAD_S:
            return self._record
        self._looked_at = now
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            self._mtime, self._record = None, None
            return None
        if mtime != self._mtime:
            self._mtime, self._record = mtime, self._read()
        return self._record

    def _read(self):
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
