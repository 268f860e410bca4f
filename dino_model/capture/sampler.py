"""The serving side of capture: `offer` decides in microseconds, a background thread writes.

`Sampler.offer` runs on the request path of the images-in entry point, so it does only what is
cheap there: the on/off switch, the size cap, a random draw at the sampling rate, the per-day cap
and a non-blocking put on a bounded queue. When the queue is full the image is dropped (and
counted), never waited for. Everything slow happens on one daemon thread: the content hash and
de-duplication against what the store already holds, reading the image header (format and size;
bytes that are not an image, or declare more pixels than the pixel cap, are not kept), the write,
and once per day the retention sweep. A write that fails is logged and counted; serving carries on.

The per-day cap counts images stored and images waiting in the queue, so a burst cannot overshoot
it; an image that turns out to be a duplicate gives its place back. The writer checks the cap again
against its own count, which starts from what the store holds, so a restarted server that is offered
images before it has listed the store still stops at the cap.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dino_model.capture.settings import CaptureSettings, capture_settings, parameters_of
from dino_model.capture.store import CapturedImage, CaptureStore, day_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Offer:
    data: bytes
    model_version: str
    drift_score: float | None
    time: datetime


def image_header(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header only; raises on bytes that are not a readable image."""
    from PIL import Image

    from dino_model.data.pixel_cap import max_image_pixels

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if width * height > max_image_pixels():
            raise ValueError(f"{width} x {height} pixels, over the pixel cap")
        return str(image.format), width, height


class Sampler:
    """Samples offered images into a capture store, off the caller's thread."""

    def __init__(self, settings: CaptureSettings, store: CaptureStore | None = None, *,
                 seed: int | None = None) -> None:
        self.settings = settings
        self.store = store if store is not None or not settings.enabled else CaptureStore(settings.store)
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._queue: queue.Queue[_Offer | None] = queue.Queue(maxsize=settings.queue_size)
        self._lock = threading.Lock()
        self._per_day: Counter[str] = Counter()  # stored + waiting, per UTC day
        self._seen: set[str] | None = None
        self._stored: Counter[str] = Counter()  # the writer's own count per day: the cap's last word
        self._swept_day = ""
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def offer(self, image_bytes: bytes, *, model_version: str, drift_score: float | None = None,
              now: datetime | None = None) -> bool:
        """Queue this image for capture if it is sampled; True when queued. Never blocks."""
        if not self.settings.enabled:
            return False
        if len(image_bytes) > self.settings.max_bytes:
            self.counts["too_large"] += 1
            return False
        if self._random.random() >= self.settings.rate:
            return False
        now = (now or datetime.now(UTC)).astimezone(UTC)
        day = day_of(now)
        with self._lock:
            if self._per_day[day] >= self.settings.daily_cap:
                self.counts["over_daily_cap"] += 1
                return False
            self._per_day[day] += 1
        try:
            self._queue.put_nowait(_Offer(bytes(image_bytes), model_version, drift_score, now))
        except queue.Full:
            self._give_back(day)
            self.counts["queue_full"] += 1
            return False
        self.counts["sampled"] += 1
        self._start()
        return True

    def flush(self) -> None:
        """Wait until every queued image is written (tests, shutdown)."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="dino-capture", daemon=True)
                    self._thread.start()

    def _give_back(self, day: str) -> None:
        with self._lock:
            self._per_day[day] -= 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(item)
            except Exception as exc:  # a failed write must never reach serving
                self.counts["errors"] += 1
                logger.warning("capture: could not store an image in %s: %s", self.store, exc)
            finally:
                self._queue.task_done()

    def _load_store(self) -> set[str]:
        """What the store already holds: the hashes, and today's count toward the cap."""
        assert self.store is not None
        if self._seen is None:
            self._seen = self.store.hashes()
            with self._lock:
                for day in self.store.days():
                    if day not in self._stored:
                        self._stored[day] = self.store.count(day)
                        self._per_day[day] += self._stored[day]
        return self._seen

    def _sweep(self, now: datetime) -> None:
        """The retention sweep, once per day; what it erased is forgotten (it may be captured again)."""
        assert self.store is not None
        erased = self.store.expire(self.settings.retention_days, now)
        self._swept_day = day_of(now)
        if erased:
            self._seen = None
            with self._lock:
                for day in erased:
                    self._per_day.pop(day, None)
                    self._stored.pop(day, None)

    def _write(self, item: _Offer) -> None:
        assert self.store is not None
        seen = self._load_store()
        day = day_of(item.time)
        if self._swept_day != day:
            self._sweep(item.time)
            seen = self._load_store()
        digest = hashlib.sha256(item.data).hexdigest()
        if digest in seen:
            self._give_back(day)
            self.counts["duplicate"] += 1
            return
        if self._stored[day] >= self.settings.daily_cap:  # offered before the store's count was read
            self._give_back(day)
            self.counts["over_daily_cap"] += 1
            return
        try:
            fmt, width, height = image_header(item.data)
        except Exception as exc:
            self._give_back(day)
            self.counts["not_an_image"] += 1
            logger.debug("capture: not kept, not a readable image: %s", exc)
            return
        record = CapturedImage(sha256=digest, time=item.time.astimezone(UTC).isoformat(),
                               model_version=item.model_version, drift_score=item.drift_score,
                               bytes=len(item.data), format=fmt, width=width, height=height)
        self.store.put(record, item.data)
        seen.add(digest)
        self._stored[day] += 1
        self.counts["stored"] += 1


def sampler_from_model_config(model_config: Mapping[str, Any], env: Mapping[str, str] | None = None,
                              *, seed: int | None = None) -> Sampler:
    """The one call a Triton Python backend step makes in `initialize` (args["model_config"] as a dict)."""
    return Sampler(capture_settings(parameters_of(model_config), env), seed=seed)
