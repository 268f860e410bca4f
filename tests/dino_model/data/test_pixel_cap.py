"""The pixel cap: an image whose header declares more pixels than the cap is skipped, counted, never decoded.

The attack image is a 12000 x 12000 one-colour PNG: about 18 KB on disk, 144 Mpx - under PIL's own
decompression-bomb limit (about 179 Mpx), so PIL alone decodes it, at about 2 GB of memory per process.
Every test runs with `never_decode_past_the_cap`, which fails the test the moment PIL starts decoding
an image over the cap, so "skipped" here always means "skipped from its header".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from dino_model.config import CropConfig, EvalConfig
from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.encoded import SeededEncodedDataset
from dino_model.data.loaders import SeededMultiCropDataset
from dino_model.data.pixel_cap import DEFAULT_MAX_IMAGE_PIXELS, PIXEL_CAP_ENV, max_image_pixels, parse_pixel_cap
from dino_model.data.shard_eval import ShardLabelledImages
from dino_model.data.shard_stream import ShardEncodedDataset, ShardImages, ShardMultiCropDataset, build_shard_loader
from dino_model.data.transforms import MultiCropTransform, eval_transform
from dino_model.errors import ConfigError, DataError
from dino_model.serving.images import collect_images, load_batch

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns above 89 Mpx

HUGE = (12000, 12000)
CAPPED_REASON = "image too large to decode safely (12000 x 12000 = 144,000,000 pixels, over the cap of 64,000,000"


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", HUGE, 0).save(buffer, format="PNG", optimize=True)
    data = buffer.getvalue()
    assert len(data) < 200_000 and HUGE[0] * HUGE[1] < 2 * Image.MAX_IMAGE_PIXELS  # PIL alone would decode it
    return data


@pytest.fixture(autouse=True)
def never_decode_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's decode (ImageFile.load, behind .load() and .convert()) of an image over the cap fails the test.

    AssertionError is not an unreadable-image error, so no skip handler can swallow it.
    """
    decode = ImageFile.ImageFile.load

    def guarded(self: ImageFile.ImageFile):
        if self.size[0] * self.size[1] > _cap_or_default():
            raise AssertionError(f"decoded a {self.size[0]} x {self.size[1]} image past the pixel cap")
        return decode(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)
    monkeypatch.delenv(PIXEL_CAP_ENV, raising=False)


def _cap_or_default() -> int:
    """The cap the code under test should apply (the default where the environment spells none)."""
    try:
        return max_image_pixels()
    except ConfigError:
        return DEFAULT_MAX_IMAGE_PIXELS


def _png(path: Path, value: int, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


# ---- the setting ----------------------------------------------------------------------------------------------


def test_the_cap_is_64_mpx_unless_the_environment_sets_a_positive_number(monkeypatch: pytest.MonkeyPatch):
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 64_000_000
    monkeypatch.setenv(PIXEL_CAP_ENV, "1_000_000")
    assert max_image_pixels() == 1_000_000
    assert parse_pixel_cap(" ") == DEFAULT_MAX_IMAGE_PIXELS
    for bad in ("0", "-5", "lots", "1e6"):
        with pytest.raises(ConfigError, match=f"{PIXEL_CAP_ENV}='{bad}' is not a positive whole number of pixels"):
            parse_pixel_cap(bad)


def test_a_lowered_cap_skips_smaller_images_and_a_raised_one_keeps_them(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    _png(tmp_path / "a" / "small.png", 10)
    _png(tmp_path / "a" / "big.png", 20, size=100)
    monkeypatch.setenv(PIXEL_CAP_ENV, "5000")
    ds = ImageFolderDataset(tmp_path)
    assert [s.path.name for s in ds.samples] == ["small.png"] and ds.n_skipped == 1
    assert "100 x 100 = 10,000 pixels, over the cap of 5,000" in ds.skipped[0][1]
    monkeypatch.setenv(PIXEL_CAP_ENV, "10000")
    assert len(ImageFolderDataset(tmp_path)) == 2


def test_a_bad_cap_stops_the_first_image_open_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture):
    from dino_model.cli.main import main

    _png(tmp_path / "src" / "a" / "1.png", 10)
    monkeypatch.setenv(PIXEL_CAP_ENV, "64M")
    with pytest.raises(ConfigError, match=f"{PIXEL_CAP_ENV}='64M' is not a positive whole number"):
        ImageFolderDataset(tmp_path / "src")
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert f"{PIXEL_CAP_ENV}='64M' is not a positive whole number" in capsys.readouterr().err


# ---- training from an image folder -------------------------------------------------------------------------


def test_the_folder_scan_skips_and_counts_an_image_over_the_cap(tmp_path: Path, huge_png: bytes, caplog):
    _png(tmp_path / "a" / "1.png", 10)
    _png(tmp_path / "b" / "2.png", 20)
    (tmp_path / "a" / "huge.png").write_bytes(huge_png)
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 2 and ds.n_skipped == 1
    (path, reason), = ds.skipped
    assert path == tmp_path / "a" / "huge.png" and reason.startswith(CAPPED_REASON)
    assert "skipped 1 unreadable image(s)" in caplog.text and "huge.png" in caplog.text


def test_packing_shards_leaves_out_and_counts_an_image_over_the_cap(tmp_path: Path, huge_png: bytes,
                                                                    capsys: pytest.CaptureFixture):
    from dino_model.cli.main import main

    _png(tmp_path / "src" / "a" / "1.png", 10)
    _png(tmp_path / "src" / "b" / "2.png", 20)
    (tmp_path / "src" / "b" / "huge.png").write_bytes(huge_png)
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["images"], report["skipped"]) == (2, 1)
    assert json.loads((tmp_path / "out" / "shards.json").read_text())["skipped"] == 1


def _swap_in_after_scan(tmp_path: Path, huge_png: bytes) -> ImageFolderDataset:
    """Four class folders of one image each; the second image becomes the 144 Mpx PNG after the scan."""
    paths = [_png(tmp_path / name / "x.png", 40 * i) for i, name in enumerate("abcd")]
    images = ImageFolderDataset(tmp_path)
    paths[1].write_bytes(huge_png)
    return images


def test_pretraining_replaces_an_image_over_the_cap_by_the_next_and_counts_it(tmp_path: Path, huge_png: bytes,
                                                                              caplog):
    crops = MultiCropTransform(CropConfig(global_size=8, local_size=4, local_crops_number=1))
    dataset = SeededMultiCropDataset(_swap_in_after_scan(tmp_path, huge_png), crops, seed=0)
    with caplog.at_level(logging.WARNING):
        views, label, skipped = dataset[1]
    assert (skipped, label) == (1, 2) and views[0].shape == (3, 8, 8)
    assert CAPPED_REASON in caplog.text


def test_the_encoded_items_for_device_crops_skip_an_image_over_the_cap(tmp_path: Path, huge_png: bytes):
    dataset = SeededEncodedDataset(_swap_in_after_scan(tmp_path, huge_png), seed=0)
    item, label, skipped = dataset[1]
    assert (skipped, label) == (1, 2) and item["encoded"] != huge_png and item["path"].endswith("c/x.png")


def test_the_device_decoder_is_never_handed_an_image_over_the_cap(monkeypatch: pytest.MonkeyPatch,
                                                                   huge_png: bytes, caplog):
    from dino_model.data import gpu_crops

    handed: list[int] = []
    decode_image = gpu_crops.decode_image

    def spy(data: torch.Tensor, **kwargs):
        handed.append(data.numel())
        return decode_image(data, **kwargs)

    monkeypatch.setattr(gpu_crops, "decode_image", spy)
    small = io.BytesIO()
    Image.new("RGB", (20, 30), (1, 2, 3)).save(small, format="PNG")
    with caplog.at_level(logging.WARNING):
        images, failed = gpu_crops.decode_batch([huge_png, small.getvalue()], ["huge.png", "ok.png"],
                                                torch.device("cpu"))
    assert failed == 1 and handed == [len(small.getvalue())]
    assert [tuple(i.shape) for i in images] == [(3, 30, 20), (3, 30, 20)]
    assert "skipped huge.png: " + CAPPED_REASON in caplog.text


def test_the_batched_nvjpeg_call_is_never_handed_a_jpeg_over_the_cap(monkeypatch: pytest.MonkeyPatch, caplog):
    """The CUDA path decodes all JPEGs of a batch in one nvJPEG call; a stand-in records what it is handed."""
    from dino_model.data import gpu_crops

    handed: list[list[int]] = []

    def batched(data: list[torch.Tensor], *, mode, device) -> list[torch.Tensor]:
        handed.append([d.numel() for d in data])
        return [gpu_crops.decode_image(d, mode=mode) for d in data]

    monkeypatch.setattr(gpu_crops, "decode_jpeg", batched)
    monkeypatch.setenv(PIXEL_CAP_ENV, "1000")  # a 40 x 40 JPEG stands for one over the cap
    jpegs = []
    for size in ((40, 40), (20, 30), (30, 20)):
        buffer = io.BytesIO()
        Image.new("RGB", size, (9, 9, 9)).save(buffer, format="JPEG")
        jpegs.append(buffer.getvalue())
    with caplog.at_level(logging.WARNING):
        images, failed = gpu_crops.decode_batch(jpegs, ["big.jpg", "a.jpg", "b.jpg"], torch.device("cuda"))
    assert failed == 1 and handed == [[len(jpegs[1]), len(jpegs[2])]]
    assert [tuple(i.shape) for i in images] == [(3, 30, 20), (3, 30, 20), (3, 20, 30)]
    assert "skipped big.jpg: image too large to decode safely (40 x 40 = 1,600 pixels" in caplog.text


# ---- shards --------------------------------------------------------------------------------------------------


def _shard_folder(root: Path, huge_png: bytes, n: int = 8, bad: int = 3) -> Path:
    """One shard of n small labelled PNGs whose member `bad` is `huge_png`, and its index."""
    root.mkdir(parents=True)
    with tarfile.open(root / "shard-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            small = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), i, dtype=np.uint8)).save(small, format="PNG")
            for suffix, data in (("cls", b"0"), ("png", huge_png if i == bad else small.getvalue())):
                info = tarfile.TarInfo(f"{i:09d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = (root / "shard-000000.tar").read_bytes()
    shard = {"name": "shard-000000.tar", "count": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    index = {"format": "webdataset", "version": 1, "classes": ["c0"], "total": n, "skipped": 0, "shards": [shard]}
    (root / "shards.json").write_text(json.dumps(index))
    return root


def _first_value(views: list[torch.Tensor]) -> int:
    return int(views[0][0])


class FirstPixel:
    """[tensor([red value of pixel (0, 0)])]: says which image an item was built from."""

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return [torch.tensor([image.getpixel((0, 0))[0]])]


def test_shard_streaming_replaces_a_member_over_the_cap_and_counts_it(tmp_path: Path, huge_png: bytes, caplog):
    root = _shard_folder(tmp_path / "shards", huge_png)
    dataset = ShardMultiCropDataset(ShardImages(str(root)), FirstPixel(), 0, batch_size=8)
    with caplog.at_level(logging.WARNING):
        items = list(dataset)
    assert len(items) == 8 and sum(skipped for _, _, skipped in items) == 1
    assert sorted({_first_value(views) for views, _, _ in items}) == [0, 1, 2, 4, 5, 6, 7]
    assert "skipped sample 000000003 of shard-000000.tar: " + CAPPED_REASON in caplog.text


def test_dataloader_workers_apply_the_cap_set_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The cap is read where images are opened: a worker process inherits it with the environment."""
    big = io.BytesIO()
    Image.new("RGB", (100, 100), (200, 0, 0)).save(big, format="PNG")
    root = _shard_folder(tmp_path / "shards", big.getvalue())
    monkeypatch.setenv(PIXEL_CAP_ENV, "5000")
    dataset = ShardMultiCropDataset(ShardImages(str(root)), FirstPixel(), 0, batch_size=8)
    (views, _, skipped), = build_shard_loader(dataset, num_workers=1)
    assert int(skipped.sum()) == 1 and 200 not in views[0][:, 0].tolist()


def test_shard_evaluation_skips_a_member_over_the_cap(tmp_path: Path, huge_png: bytes, caplog):
    root = _shard_folder(tmp_path / "shards", huge_png)
    with caplog.at_level(logging.WARNING):
        items = list(ShardLabelledImages(str(root), FirstPixel()))
    assert sorted(_first_value(views) for views, _ in items) == [0, 1, 2, 4, 5, 6, 7]
    assert CAPPED_REASON in caplog.text


def test_shard_streaming_for_device_crops_never_passes_on_a_decodable_member_over_the_cap(
        tmp_path: Path, huge_png: bytes):
    """The worker hands the bytes on; the device side refuses them from the header (see the test above)."""
    from dino_model.data.gpu_crops import decode_batch

    root = _shard_folder(tmp_path / "shards", huge_png)
    items = list(ShardEncodedDataset(ShardImages(str(root)), 0, batch_size=8))
    assert len(items) == 8
    batch = [item for item, _, _ in items]
    images, failed = decode_batch([b["encoded"] for b in batch], [b["path"] for b in batch], torch.device("cpu"))
    assert failed == 1 and all(tuple(i.shape) == (3, 16, 16) for i in images)


# ---- `dino-mlops infer` and index building ------------------------------------------------------------------


def test_infer_preprocessing_skips_and_names_an_image_over_the_cap(tmp_path: Path, huge_png: bytes):
    folder = tmp_path / "folder"
    ok = _png(folder / "cats" / "ok.png", 30)
    (folder / "cats" / "huge.png").write_bytes(huge_png)
    single = tmp_path / "single-huge.png"
    single.write_bytes(huge_png)
    items, skipped = collect_images([folder, single])
    assert [i.path for i in items] == [ok, single]
    assert skipped[0]["path"] == str(folder / "cats" / "huge.png") and skipped[0]["reason"].startswith(CAPPED_REASON)
    images, kept, bad = load_batch(items, eval_transform(EvalConfig(image_size=8, resize_size=8)))
    assert images.shape == (1, 3, 8, 8) and [i.path for i in kept] == [ok]
    assert bad == [{"path": str(single), "reason": bad[0]["reason"]}] and bad[0]["reason"].startswith(CAPPED_REASON)


def test_infer_embeds_the_rest_and_lists_every_image_over_the_cap(tmp_path: Path, huge_png: bytes):
    """embed_images (behind `infer` and `index build`) with a stand-in for the Triton client."""
    from dino_model.export.contract import EMBEDDING, ModelContract
    from dino_model.serving.inference import embed_images

    contract = ModelContract(image_size=8, resize_size=8, embed_dim=4, mean=(0.5,) * 3, std=(0.5,) * 3)
    sent: list[tuple[int, ...]] = []

    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        sent.append(images.shape)
        return {EMBEDDING: np.ones((len(images), 4), np.float32)}

    client = SimpleNamespace(served=SimpleNamespace(contract=contract, max_batch_size=4), model_name="dino",
                             infer=infer)
    ok = _png(tmp_path / "in" / "ok.png", 30)
    shutil.copy(ok, tmp_path / "in" / "ok2.png")
    (tmp_path / "in" / "huge.png").write_bytes(huge_png)
    (tmp_path / "huge-single.png").write_bytes(huge_png)
    result = embed_images([tmp_path / "in", tmp_path / "huge-single.png"], client)
    assert result.paths == [str(ok), str(tmp_path / "in" / "ok2.png")] and result.embeddings.shape == (2, 4)
    assert sent == [(2, 3, 8, 8)]
    assert {s["path"] for s in result.skipped} == {str(tmp_path / "in" / "huge.png"), str(tmp_path / "huge-single.png")}
    assert all(s["reason"].startswith(CAPPED_REASON) for s in result.skipped)


# ---- evaluation readers that cannot skip ---------------------------------------------------------------------


def test_davis_frames_and_masks_over_the_cap_are_a_clear_error(tmp_path: Path, huge_png: bytes):
    from dino_model.eval.davis.io import read_frame, read_mask

    (tmp_path / "00000.jpg").write_bytes(huge_png)
    (tmp_path / "00000.png").write_bytes(huge_png)
    for read, path in ((read_frame, tmp_path / "00000.jpg"), (read_mask, tmp_path / "00000.png")):
        with pytest.raises(DataError, match=f"cannot use {path}: image too large to decode safely"):
            read(path)


def test_the_error_survives_pickling_between_processes():
    import pickle

    from dino_model.data.pixel_cap import ImageTooLargeError

    copy = pickle.loads(pickle.dumps(ImageTooLargeError(9000, 8000, 64_000_000)))
    assert (copy.width, copy.height, copy.cap) == (9000, 8000, 64_000_000)
    assert str(copy).startswith("9000 x 8000 = 72,000,000 pixels, over the cap of 64,000,000")


def test_training_data_reads_the_cap_before_any_worker_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              huge_png: bytes, caplog):
    """Shards decode only in the workers; a malformed cap must stop the run when the data is built."""
    from dino_model.data.sources import build_train_data

    root = _shard_folder(tmp_path / "shards", huge_png)
    with caplog.at_level(logging.DEBUG, logger="dino_model.data.sources"):
        build_train_data(str(root), FirstPixel(), seed=0, batch_size=4, rank=0, world_size=1)
    assert f"images over 64,000,000 pixels are skipped ({PIXEL_CAP_ENV})" in caplog.text
    monkeypatch.setenv(PIXEL_CAP_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{PIXEL_CAP_ENV}='lots' is not a positive whole number"):
        build_train_data(str(root), FirstPixel(), seed=0, batch_size=4, rank=0, world_size=1)
