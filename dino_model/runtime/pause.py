"""Named points where a long operation can be made to stop, so a test can kill it at a known moment.

A data pull and a deploy must survive SIGKILL at every step; their tests (and operators rehearsing a
failure) set `DINO_<OPERATION>_PAUSE_AT=<point>` and kill the process once it reports the pause. The
process then waits until it is killed: it never resumes, so nothing after the point can run by accident.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PausePoints:
    """The points of one operation, the variable that picks one, and the line logged on pausing there."""

    env: str  # DINO_<OPERATION>_PAUSE_AT
    points: tuple[str, ...]  # in the order the operation passes them
    message: str  # logged at the pause, with {point}, {env} and {pid}

    def at(self, point: str) -> None:
        """Stop here, until the process is killed, when the variable names `point`."""
        if point not in self.points:
            raise ValueError(f"{point!r} is not one of the pause points {self.points}")
        if os.environ.get(self.env) != point:
            return
        logger.warning(self.message.format(point=point, env=self.env, pid=os.getpid()))
        for handler in logging.getLogger().handlers:
            handler.flush()
        while True:
            time.sleep(3600)
