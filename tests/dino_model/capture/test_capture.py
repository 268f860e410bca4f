"""Capture: off by default, rate, per-day cap, size cap, de-duplication, records, retention, erasure, S3."""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_model.capture import CaptureSettings, CaptureStore, Sampler, capture_settings, sampler_from_model_config
from dino_model.errors import ConfigError, DataError

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def png(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def on(store: Path | str, **changes) -> CaptureSettings:
    return CaptureSettings(**{"enabled": True, "store": str(store), "rate": 1.0, **changes})


def test_off_by_default_and_switched_on_per_deployment(tmp_path: Path) -> None:
    assert capture_settings({}, env={}).enabled is False
    sampler = sampler_from_model_config({"parameters": {}}, env={})
    assert sampler.offer(png(0), model_version="1") is False
    assert sampler.store is None and sampler._thread is None  # nothing started, nothing written

    params = {"parameters": {"capture_enabled": {"string_value": "true"},
                             "capture_store": {"string_value": str(tmp_path)},
                             "capture_rate": {"string_value": "0.25"}}}
    assert sampler_from_model_config(params, env={}).settings.rate == 0.25
    # the pod's environment wins over the model configuration: an operator's switch
    off = sampler_from_model_config(params, env={"DINO_CAPTURE_ENABLED": "0"})
    assert off.enabled is False


@pytest.mark.parametrize(("env", "message"), [
    ({"DINO_CAPTURE_RATE": "2"}, "capture rate must be in (0, 1]"),
    ({"DINO_CAPTURE_RATE": "lots"}, "environment variable DINO_CAPTURE_RATE must be a float"),
    ({"DINO_CAPTURE_ENABLED": "maybe"}, "DINO_CAPTURE_ENABLED must be one of"),
    ({"DINO_CAPTURE_DAILY_CAP": "0"}, "daily_cap must be at least 1"),
    ({"DINO_CAPTURE_ENABLED": "1"}, "no store is set"),
])
def test_bad_settings_are_refused_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        capture_settings({}, env=env)
    assert "\n" not in str(info.value)


def test_each_image_is_stored_with_its_time_model_version_and_drift(tmp_path: Path) -> None:
    with Sampler(on(tmp_path)) as sampler:
        assert sampler.offer(png(1), model_version="3", drift_score=0.42, now=NOON) is True
        sampler.flush()
    store = CaptureStore(tmp_path)
    [record] = store.records("2026-12-01")
    assert (record.model_version, record.drift_score, record.time) == ("3", 0.42, NOON.isoformat())
    assert (record.format, record.width, record.height) == ("PNG", 8, 8)
    assert store.image_bytes(record) == png(1)
    assert sorted(p.name for p in (tmp_path / "2026-12-01").iterdir()) == [f"{record.sha256}.json",
                                                                         f"{record.sha256}.png"]


def test_sampling_rate(tmp_path: Path) -> None:
    with Sampler(on(tmp_path, rate=0.1), seed=0) as sampler:
        queued = sum(sampler.offer(png(i), model_version="1", now=NOON) for i in range(1000))
    assert 70 <= queued <= 130  # binomial(1000, 0.1): mean 100, sd 9.5
    assert len(CaptureStore(tmp_path).records("2026-12-01")) == queued


def test_per_day_cap_counts_the_store_and_restarts_each_day(tmp_path: Path) -> None:
    with Sampler(on(tmp_path, daily_cap=3)) as sampler:
        results = [sampler.offer(png(i), model_version="1", now=NOON) for i in range(5)]
        assert sampler.offer(png(10), model_version="1", now=NOON + timedelta(days=1)) is True
    assert results == [True, True, True, False, False]
    # a new process (a restarted server) counts what the store already holds toward today's cap
    with Sampler(on(tmp_path, daily_cap=3)) as again:
        again.offer(png(20), model_version="1", now=NOON)
        again.flush()
        assert again.offer(png(21), model_version="1", now=NOON) is False
    assert CaptureStore(tmp_path).count("2026-12-01") == 3


def test_size_cap_and_bytes_that_are_not_images(tmp_path: Path) -> None:
    big = png(0, size=64)
    with Sampler(on(tmp_path, max_bytes=len(big) - 1)) as sampler:
        assert sampler.offer(big, model_version="1", now=NOON) is False
        assert sampler.offer(b"not an image at all", model_version="1", now=NOON) is True  # checked off-path
        sampler.flush()
        assert sampler.counts["too_large"] == 1 and sampler.counts["not_an_image"] == 1
    assert CaptureStore(tmp_path).days() == []


def test_duplicates_are_stored_once_even_across_days_and_restarts(tmp_path: Path) -> None:
    with Sampler(on(tmp_path, daily_cap=2)) as sampler:
        for _ in range(3):
            sampler.offer(png(1), model_version="1", now=NOON)
        sampler.flush()
        # duplicates gave their place under the cap back
        assert sampler.offer(png(2), model_version="1", now=NOON) is True
    with Sampler(on(tmp_path)) as again:
        again.offer(png(1), model_version="2", now=NOON + timedelta(days=1))
        again.flush()
        assert again.counts["duplicate"] == 1
    assert [len(CaptureStore(tmp_path).records(d)) for d in CaptureStore(tmp_path).days()] == [2]


class SlowStore(CaptureStore):
    """A store whose writes wait for a signal: a stalled disk or object store."""

    def __init__(self, url: str, release: threading.Event) -> None:
        super().__init__(url)
        self.release = release

    def put(self, record, data) -> None:
        self.release.wait(10)
        super().put(record, data)


def test_a_stalled_store_never_blocks_the_caller(tmp_path: Path) -> None:
    release = threading.Event()
    sampler = Sampler(on(tmp_path, queue_size=4), SlowStore(str(tmp_path), release))
    started = time.perf_counter()
    results = [sampler.offer(png(i), model_version="1", now=NOON) for i in range(50)]
    elapsed = time.perf_counter() - started
    release.set()
    sampler.close()
    assert elapsed < 1.0  # 50 offers against a store that does not answer
    assert sampler.counts["queue_full"] >= 40 and sum(results) <= 6
    assert CaptureStore(tmp_path).count("2026-12-01") == sum(results)


def test_a_failing_store_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's folder should be")
    with Sampler(on(blocker / "store")) as sampler:
        assert sampler.offer(png(0), model_version="1", now=NOON) is True
        sampler.flush()
    assert sampler.counts["errors"] == 1
    assert "could not store an image" in caplog.text


def test_retention_sweeps_old_days_when_a_new_day_starts(tmp_path: Path) -> None:
    with Sampler(on(tmp_path, retention_days=2)) as sampler:
        for day in range(4):
            sampler.offer(png(day), model_version="1", now=NOON + timedelta(days=day))
    assert CaptureStore(tmp_path).days() == ["2026-12-03", "2026-12-04"]
    assert CaptureStore(tmp_path).expire(1, NOON + timedelta(days=10)) == ["2026-12-03", "2026-12-04"]


def test_erase_by_hash_and_by_day(tmp_path: Path) -> None:
    with Sampler(on(tmp_path)) as sampler:
        for i in range(3):
            sampler.offer(png(i), model_version="1", now=NOON + timedelta(days=i))
    store = CaptureStore(tmp_path)
    first = store.records("2026-12-01")[0].sha256
    assert store.erase_hashes([first]) == 1
    assert store.days() == ["2026-12-01", "2026-12-02", "2026-12-03"] and store.count("2026-12-01") == 0
    assert store.erase_days(["2026-12-02"]) == ["2026-12-02"]
    assert [r.day for r in store.iter_records()] == ["2026-12-03"]
    with pytest.raises(DataError, match="not a sha256 hash"):
        store.erase_hashes(["xyz"])


def test_an_image_without_its_record_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "2026-12-01").mkdir()
    (tmp_path / "2026-12-01" / f"{'a' * 64}.png").write_bytes(png(0))  # the writer died before the record
    assert CaptureStore(tmp_path).records("2026-12-01") == []


@pytest.fixture
def s3_bucket(free_port: int, monkeypatch: pytest.MonkeyPatch):
    """A real S3 API (moto's server) on a loopback port with a bucket `dvc`; s3fs pointed at it."""
    pytest.importorskip("s3fs", reason="S3 capture stores need: pip install 'dino-mlops[s3]'")
    server_mod = pytest.importorskip("moto.server", reason="needs: pip install 'moto[server]'")
    import boto3

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing-secret"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{free_port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="dvc")
    yield url
    server.stop()


def test_a_prefix_of_the_object_store(s3_bucket: str) -> None:
    import boto3

    with Sampler(on("s3://dvc/captured", retention_days=1)) as sampler:
        for i in range(3):
            sampler.offer(png(i), model_version="1", drift_score=0.1, now=NOON + timedelta(days=i // 2))
        sampler.offer(png(0), model_version="1", now=NOON + timedelta(days=1))
    assert sampler.counts["errors"] == 0 and sampler.counts["duplicate"] == 0  # day 1 was swept first
    keys = sorted(o["Key"] for o in boto3.client("s3", endpoint_url=s3_bucket)
                  .list_objects_v2(Bucket="dvc")["Contents"])
    assert all(k.startswith("captured/2026-12-02/") for k in keys) and len(keys) == 4
    store = CaptureStore("s3://dvc/captured")
    records = store.records("2026-12-02")
    assert store.image_bytes(records[0]) in {png(0), png(2)}
    assert store.erase_hashes([r.sha256 for r in records]) == 2
    assert CaptureStore("s3://dvc/captured").hashes() == set()
