"""A 64-image subset of digits: enough for several steps, small enough for seconds per epoch."""

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_digits(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small_digits")
    for class_dir in sorted((digits_root / "train").iterdir()):
        (root / class_dir.name).mkdir()
        for png in sorted(class_dir.iterdir())[:7]:
            shutil.copy(png, root / class_dir.name / png.name)
    (root / "extra").mkdir()
    for png in sorted((digits_root / "train" / "0").iterdir())[7:13]:
        shutil.copy(png, root / "extra" / png.name)
    return root  # 10 x 7 + 6 = 76 images


def small_cfg(root: Path, out: Path, *overrides: str):
    from dino_model.config import load_config

    return load_config("tiny", overrides=[
        f"data.root={root}", f"train.output_dir={out}", "model.out_dim=128", "train.batch_size=8",
        "optim.freeze_last_layer_epochs=1", *overrides])
