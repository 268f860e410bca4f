"""Retrieval and copy detection end to end: the drivers on generated folders with the session's tiny
checkpoint, checked against an independent NumPy search, and both `dino-mlops eval` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dino_model.cli.main import build_parser, main
from dino_model.errors import DataError
from dino_model.eval.copydetection_run import run_copydetection_eval
from dino_model.eval.features import extract_features, labels_by_name
from dino_model.eval.retrieval_run import run_retrieval_eval
from dino_model.eval.search_settings import CopyDetectionConfig, RetrievalConfig
from dino_model.eval.settings import checkpoint_config
from dino_model.models.loading import load_backbone

CLASS_COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def draw(seed: int, background: tuple[int, int, int], size: int = 40) -> Image.Image:
    """`background` with three random grey shapes on it."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        grey = int(rng.integers(0, 256))
        d.ellipse((x0, y0, x0 + int(rng.integers(4, 16)), y0 + int(rng.integers(4, 16))), fill=(grey,) * 3)
    return img


def labelled_folder(root: Path, per_class: int, classes=tuple(CLASS_COLOURS), seed: int = 0) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            draw(seed + 100 * c + i, CLASS_COLOURS[name]).save(root / name / f"{i}.png")
    return root


def reference_map(q: np.ndarray, qy: np.ndarray, d: np.ndarray, dy: np.ndarray, leave_one_out: bool) -> float:
    """Mean trapezoidal AP from a plain double loop over cosine rankings."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    aps = []
    for i in range(len(q)):
        order = np.argsort(-(d @ q[i]), kind="stable")
        if leave_one_out:
            order = order[order != i]  # the query itself is junk: it leaves the ranking
        hits = [r for r, j in enumerate(order) if dy[j] == qy[i]]
        if not hits:
            continue
        ap = sum(((1.0 if r == 0 else k / r) + (k + 1) / (r + 1)) / 2 for k, r in enumerate(hits)) / len(hits)
        aps.append(ap)
    return 100.0 * float(np.mean(aps))


def test_retrieval_leave_one_out_matches_a_numpy_search(tiny_checkpoint: Path, tmp_path: Path):
    db = labelled_folder(tmp_path / "db", per_class=4)
    report = run_retrieval_eval(tiny_checkpoint, database_dir=db, output=tmp_path / "r.json")
    m = report["metrics"]
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == m
    assert report["details"]["mode"] == "leave_one_out" and report["details"]["n_scored_queries"] == 12
    backbone, _ = load_backbone(tiny_checkpoint)
    x, y = extract_features(backbone, db, checkpoint_config(tiny_checkpoint).eval)
    expected = reference_map(x.numpy(), y.numpy(), x.numpy(), y.numpy(), leave_one_out=True)
    assert m["retrieval_map"] == pytest.approx(expected, rel=1e-5)
    assert 0 <= m["retrieval_recall_at_1"] <= m["retrieval_recall_at_5"] <= m["retrieval_recall_at_10"] == 100.0


def test_retrieval_with_a_query_folder_maps_classes_by_name(tiny_checkpoint: Path, tmp_path: Path):
    db = labelled_folder(tmp_path / "db", per_class=3, classes=("green", "red"))
    queries = labelled_folder(tmp_path / "q", per_class=2, classes=("blue", "red"), seed=7)
    report = run_retrieval_eval(tiny_checkpoint, database_dir=db, query_dir=queries,
                                settings=RetrievalConfig(recall_ks=[1, 3]), output=tmp_path / "r.json")
    # blue (query label 0) has no database image: left out, not matched to green (database label 0)
    assert report["details"]["n_queries"] == 4 and report["details"]["n_scored_queries"] == 2
    assert set(report["metrics"]) >= {"retrieval_recall_at_3", "retrieval_mp_at_3"}
    cfg = checkpoint_config(tiny_checkpoint).eval
    backbone, _ = load_backbone(tiny_checkpoint)
    dx, dy = extract_features(backbone, db, cfg)
    qx, qy = extract_features(backbone, queries, cfg)
    qy = labels_by_name(qy, ["blue", "red"], ["green", "red"])
    assert qy.tolist() == [-1, -1, 1, 1]
    expected = reference_map(qx.numpy(), qy.numpy(), dx.numpy(), dy.numpy(), leave_one_out=False)
    assert report["metrics"]["retrieval_map"] == pytest.approx(expected, rel=1e-5)


def test_retrieval_needs_class_folders(random_checkpoint: Path, tmp_path: Path):
    (tmp_path / "flat").mkdir()
    draw(0, (0, 0, 0)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="class sub-folders"):
        run_retrieval_eval(random_checkpoint, database_dir=tmp_path / "flat", output=tmp_path / "r.json")


def flat_folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        draw(i, tuple(int(c) for c in rng.integers(0, 256, 3)), size=48).save(root / f"{i:02d}.png")
    return root


def test_copydetection_end_to_end_ranks_add_up(tiny_checkpoint: Path, tmp_path: Path):
    images = flat_folder(tmp_path / "images", 30)
    settings = CopyDetectionConfig(originals=10, edits=["jpeg", "crop", "strong"])
    report = run_copydetection_eval(tiny_checkpoint, images_dir=images, settings=settings,
                                    output=tmp_path / "cd.json")
    d, m = report["details"], report["metrics"]
    assert (d["n_originals"], d["n_distractors"], d["n_queries"]) == (10, 20, 30)
    assert d["whitening"]["dim"] == 19 and d["feature_dim"] == 128  # CLS + GeM of width 64
    ranks = np.array([q["rank"] for q in d["per_query"]])
    assert ranks.min() >= 0 and ranks.max() < 30
    assert m["copydetection_recall_at_1"] == pytest.approx(100 * (ranks == 0).mean())
    ap = np.where(ranks == 0, 1.0, 1 / (2 * (ranks + 1)))
    assert m["copydetection_map"] == pytest.approx(100 * ap.mean())
    jpeg = np.array([q["edit"] == "jpeg" for q in d["per_query"]])
    assert m["copydetection_recall_at_1_jpeg"] == pytest.approx(100 * (ranks[jpeg] == 0).mean())
    assert "copydetection_map_no_whitening" in m
    # the same seed draws the same originals and queries: a second run reports the same numbers
    again = run_copydetection_eval(tiny_checkpoint, images_dir=images, settings=settings, output=tmp_path / "b.json")
    assert again["metrics"] == m and again["details"]["originals"] == d["originals"]


def test_copydetection_needs_distractors(random_checkpoint: Path, tmp_path: Path):
    images = flat_folder(tmp_path / "images", 5)
    with pytest.raises(DataError, match="at least 6 images"):
        run_copydetection_eval(random_checkpoint, images_dir=images, settings=CopyDetectionConfig(originals=4),
                               output=tmp_path / "cd.json")


@pytest.mark.parametrize(("argv", "func"), [
    (["eval", "retrieval", "--checkpoint", "c.pth"], "run_retrieval"),
    (["eval", "copydetection", "--checkpoint", "c.pth"], "run_copydetection"),
])
def test_search_commands_are_registered(argv: list[str], func: str) -> None:
    assert build_parser().parse_args(argv).func.__name__ == func


def test_cli_commands_write_their_reports(capsys, random_checkpoint: Path, tmp_path: Path):
    db = labelled_folder(tmp_path / "db", per_class=2)
    assert main(["eval", "retrieval", "--checkpoint", str(random_checkpoint), "--database-dir", str(db),
                 "--recall-k", "1", "2", "--output", str(tmp_path / "r.json"), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["evaluation"] == "retrieval" and "details" not in out
    assert set(out["metrics"]) == {"retrieval_map", "retrieval_recall_at_1", "retrieval_recall_at_2",
                                   "retrieval_mp_at_1", "retrieval_mp_at_2"}
    images = flat_folder(tmp_path / "images", 12)
    assert main(["eval", "copydetection", "--checkpoint", str(random_checkpoint), "--images", str(images),
                 "--originals", "4", "--edits", "jpeg", "rotate", "--no-whitening", "--device", "cpu",
                 "--output", str(tmp_path / "cd.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["evaluation"] == "copydetection"
    assert "copydetection_map_no_whitening" not in out["metrics"]  # no second, unwhitened run
    assert set(out["metrics"]) >= {"copydetection_map_jpeg", "copydetection_recall_at_1_rotate"}
    saved = json.loads((tmp_path / "cd.json").read_text())
    assert saved["details"]["whitening"] is None and saved["details"]["n_queries"] == 8
    assert torch.tensor([q["rank"] for q in saved["details"]["per_query"]]).ge(0).all()


class Artifact:
    """Stand-in for a KFP artifact: a path, and the metrics logged to it."""

    def __init__(self, path: Path) -> None:
        self.path, self.logged = str(path), {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[name] = value


def test_pipeline_components_log_metrics_and_reports(random_checkpoint: Path, tmp_path: Path, dvc_site_cache,
                                                    monkeypatch):
    """The components read their images by reference: a DVC version on a (local) remote, materialised by md5."""
    import shutil

    import components.evaluate as evaluate
    from dino_model.versioning.mirror import LOCAL_CACHE_ENV
    from dino_model.versioning.reference import reference_of
    from dino_model.versioning.repo import init_repo
    from dino_model.versioning.sync import snapshot

    (tmp_path / "model").mkdir()
    shutil.copy(random_checkpoint, tmp_path / "model" / "checkpoint.pth")
    labelled_folder(tmp_path / "version" / "data" / "val", per_class=4)
    init_repo(tmp_path / "version")  # no git: the version lives only on its remote
    version = snapshot(tmp_path / "version")
    ref = reference_of(version.md5, remote_url=str(tmp_path / "version" / ".dvc-remote"), nfiles=version.nfiles)
    monkeypatch.setenv(LOCAL_CACHE_ENV, str(tmp_path / "cache"))
    common = dict(model=Artifact(tmp_path / "model"), data_ref=ref.to_json(), config="tiny", config_yaml="",
                  overrides=[])
    runs = {"retrieval": (evaluate.eval_retrieval, dict(val_subdir="val")),
            "copydetection": (evaluate.eval_copydetection, dict(image_subdir="val", originals=3))}
    for name, (component, extra) in runs.items():
        metrics, report, report_json = (Artifact(tmp_path / f"{name}.{ext}") for ext in ("metrics", "md", "json"))
        value = component.python_func(**common, **extra, metrics=metrics, report=report, report_json=report_json)
        saved = json.loads(Path(report_json.path).read_text())
        assert saved["evaluation"] == name and metrics.logged == saved["metrics"]
        assert value == saved["metrics"][f"{name}_map"]
        assert Path(report.path).read_text().startswith("# ")
