"""Packaged data sets materialise as class folders with stratified, reproducible splits."""

import hashlib

from dino_model.data.datasets import ImageFolderDataset
from dino_model.data.materialize import materialize


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_digits_split_sizes_and_classes(digits_root):
    train, val = ImageFolderDataset(digits_root / "train"), ImageFolderDataset(digits_root / "val")
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert train.classes == [str(i) for i in range(10)] == val.classes
    image, _ = train[0]
    assert image.size == (32, 32)


def test_materialise_is_deterministic(digits_root, tmp_path):
    assert _digest(materialize("digits", tmp_path)) == _digest(digits_root)


def test_faces_set(tmp_path):
    root = materialize("faces", tmp_path)
    assert ImageFolderDataset(root / "train").classes == ["face", "nonface"]
