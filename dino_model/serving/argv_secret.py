"""Keeping the admin key out of tritonserver's command line, which every local user can read.

Triton takes its admin key only as a command-line flag, and /proc/<pid>/cmdline is world-readable.
So the server is started with a placeholder where the key goes, the key in the environment (which
/proc shows to the process's own user only), and a small library preloaded (argv_secret.c) that puts
the key into Triton's argv before main() without touching the memory /proc shows, then clears the
variable. The library is compiled from its source on first use, per server start, into the server's
private work folder; where no C compiler exists the key goes on the command line as before, with a
warning (inside a container the pod's own PID namespace hides the process from other pods).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

PLACEHOLDER = "@DINO_ARGV_SECRET@"
VARIABLE = "DINO_ARGV_SECRET"
SOURCE = Path(__file__).with_name("argv_secret.c")


def build_preload(workdir: Path) -> Path | None:
    """The compiled library in `workdir`, or None (with a warning) when no C compiler can build it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler: tritonserver gets its admin key on the command line, where other users of "
                       "this machine can read it (install gcc to keep it out)")
        return None
    library = workdir / "libdino_argv_secret.so"
    try:
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE)], check=True,
                       capture_output=True, text=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        logger.warning("cannot build %s (%s): tritonserver gets its admin key on the command line",
                       SOURCE.name, detail.strip().splitlines()[-1] if detail.strip() else exc)
        return None
    return library


def hidden_environment(env: dict[str, str], library: Path, key: str) -> dict[str, str]:
    """`env` with the library preloaded and the key where it reads it."""
    preload = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    return {**env, "LD_PRELOAD": preload, VARIABLE: key}
