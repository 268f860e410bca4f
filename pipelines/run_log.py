"""What a person sees of a local pipeline run: stages, progress and scores; everything else in a log file.

kfp.local prints each task's executor input, its whole output and per-task warnings to the terminal
(about 1,100 lines for the main job, of which under a hundred say anything to a person). During a run,
`sys.stdout` and `sys.stderr` become streams that write every line to the run's log file and pass on
to the terminal only the lines that follow the run: a task starting and finishing, training epochs,
scores, the quality gate's decision, the deployed version, and errors. A failed run also shows the
end of the log, where the failing task's own output is.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# lines worth a person's attention; everything is in the log file regardless
SHOWN = re.compile(
    r"Executing task|finished with status|epoch \d+:|top-1|quality gate|is serving|released|ERROR|Error:|error:"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FilteredStream(io.TextIOBase):
    """A text stream writing everything to `log` and the lines matching SHOWN to `terminal`."""

    def __init__(self, log: TextIO, terminal: TextIO) -> None:
        self.log, self.terminal = log, terminal
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if SHOWN.search(ANSI.sub("", line)):
                self.terminal.write(line.strip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


@contextlib.contextmanager
def run_log(path: str | Path, *, tail_on_error: int = 40) -> Iterator[Path]:
    """Route this process's output through a FilteredStream into `path` (appended) while the block runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    with path.open("a") as log:
        stream = FilteredStream(log, terminal)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = stream
        try:
            yield path
        except BaseException:
            sys.stdout, sys.stderr = saved
            log.flush()
            lines = path.read_text(errors="replace").splitlines()[-tail_on_error:]
            terminal.write(f"--- the last {len(lines)} lines of {path} ---\n" + "\n".join(lines) + "\n")
            raise
        finally:
            sys.stdout, sys.stderr = saved
            log.flush()
