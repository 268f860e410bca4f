"""Evaluation components: k-NN, linear probe, DAVIS label propagation, attention maps, image
retrieval and copy detection.

Each wraps one dino_model evaluation; scores go to Metrics (flat name -> number, what the KFP UI
and the quality gate read), class confusion to ClassificationMetrics, reports to Markdown/HTML.
k-NN and the linear probe run with the config saved in the trained checkpoint plus the run's
`overrides` (dino_model.eval.settings.pipeline_eval_config): an `eval.*` override applies, and the
model is evaluated at the resolution it was trained at (retrieval and copy detection too). `config`
and `config_yaml` only matter for a checkpoint that saved no config.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_knn(model: Input[Model], data: Input[Dataset], train_subdir: str, val_subdir: str, config: str,
             config_yaml: str, overrides: List[str], pushgateway: str, run_id: str, metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[Markdown], report_json: Output[Artifact]
             ) -> float:
    """Weighted k-NN (DINO protocol) on frozen teacher features; returns top-1 (%) at k = 20.

    Scores also go to the Pushgateway at `pushgateway` (evaluation="knn", run=`run_id`).
    """
    from pathlib import Path

    from dino_model.eval.knn_run import run_knn_eval
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.monitoring.metrics import push_eval_metrics

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    result = run_knn_eval(checkpoint, cfg.eval, train_dir=f"{data.path}/{train_subdir}",
                          val_dir=f"{data.path}/{val_subdir}", output=report_json.path)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    confusion.log_confusion_matrix(result["details"]["classes"], result["details"]["confusion_matrix"])
    Path(report.path).write_text(Path(result["report_path"]).with_suffix(".md").read_text())
    push_eval_metrics("knn", result["metrics"], gateway=pushgateway, labels={"run": run_id})
    return float(result["metrics"]["knn_top1"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_linear(model: Input[Model], data: Input[Dataset], train_subdir: str, val_subdir: str, config: str,
                config_yaml: str, overrides: List[str], epochs: int, lr: float, pushgateway: str, run_id: str,
                metrics: Output[Metrics], report: Output[Markdown], report_json: Output[Artifact]) -> float:
    """Linear probe on frozen centre-crop features (extracted once); returns the best top-1 (%).

    `lr` is per 256 images (official: 0.001 for ImageNet; small sets with cached features need ~1.0).
    Scores also go to the Pushgateway at `pushgateway` (evaluation="linear", run=`run_id`).
    """
    from pathlib import Path

    from dino_model.eval.linear import LinearProbeConfig
    from dino_model.eval.linear_run import run_linear_eval
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.monitoring.metrics import push_eval_metrics

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    probe = LinearProbeConfig(epochs=epochs, lr=lr, augment=False)
    result = run_linear_eval(checkpoint, cfg.eval, train_dir=f"{data.path}/{train_subdir}",
                             val_dir=f"{data.path}/{val_subdir}", probe=probe, output=report_json.path)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    Path(report.path).write_text(Path(report_json.path).with_suffix(".md").read_text())
    push_eval_metrics("linear", result["metrics"], gateway=pushgateway, labels={"run": run_id})
    return float(result["metrics"]["linear_top1"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def attention_maps(model: Input[Model], data: Input[Dataset], image_subdir: str, n_images: int,
                   maps: Output[HTML]) -> None:
    """Last-layer CLS attention per head (60% mass masks) on a few images, as an HTML page."""
    from dino_model.eval.attention_page import attention_html

    attention_html(f"{model.path}/checkpoint.pth", f"{data.path}/{image_subdir}", maps.path, n_images=n_images)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_davis(model: Input[Model], davis_root: str, short_side: int, max_frames: int, pushgateway: str,
               run_id: str, metrics: Output[Metrics], results: Output[Artifact], report: Output[Markdown]) -> float:
    """DAVIS 2017 semi-supervised label propagation, scored as the official evaluation; returns J&F-Mean.

    `short_side`/`max_frames` of 0 keep the official full resolution and every frame.
    """
    from pathlib import Path

    from dino_model.eval.davis.config import DavisConfig
    from dino_model.eval.davis.run import run_davis_eval
    from dino_model.monitoring.metrics import push_eval_metrics

    cfg = DavisConfig(short_side=short_side or 480, max_frames=max_frames or None)
    result = run_davis_eval(f"{model.path}/checkpoint.pth", cfg, davis_root=davis_root, output_dir=results.path)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    Path(report.path).write_text(Path(result["report_path"]).with_suffix(".md").read_text())
    push_eval_metrics("davis", result["metrics"], gateway=pushgateway, labels={"run": run_id})
    return float(result["metrics"]["davis_jf_mean"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_retrieval(model: Input[Model], data: Input[Dataset], val_subdir: str, config: str, config_yaml: str,
                   overrides: List[str], pushgateway: str, run_id: str, metrics: Output[Metrics],
                   report: Output[Markdown], report_json: Output[Artifact]) -> float:
    """Leave-one-out image retrieval on the labelled validation folder (frozen teacher CLS features,
    relevance = same class); returns the mAP (%). Scores also go to the Pushgateway (evaluation="retrieval").
    """
    from pathlib import Path

    from dino_model.eval.retrieval_run import run_retrieval_eval
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.monitoring.metrics import push_eval_metrics

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    result = run_retrieval_eval(checkpoint, cfg.eval, database_dir=f"{data.path}/{val_subdir}",
                                output=report_json.path)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    Path(report.path).write_text(Path(result["report_path"]).with_suffix(".md").read_text())
    push_eval_metrics("retrieval", result["metrics"], gateway=pushgateway, labels={"run": run_id})
    return float(result["metrics"]["retrieval_map"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_copydetection(model: Input[Model], data: Input[Dataset], image_subdir: str, originals: int, config: str,
                       config_yaml: str, overrides: List[str], pushgateway: str, run_id: str,
                       metrics: Output[Metrics], report: Output[Markdown], report_json: Output[Artifact]) -> float:
    """Copy detection on `image_subdir`: `originals` seeded images edited into queries, the rest distractors
    (CLS + GeM features, whitening learned on the distractors); returns the mAP (%). Scores also go to
    the Pushgateway (evaluation="copydetection").
    """
    from pathlib import Path

    from dino_model.eval.copydetection_run import run_copydetection_eval
    from dino_model.eval.search_settings import CopyDetectionConfig
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.monitoring.metrics import push_eval_metrics

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    result = run_copydetection_eval(checkpoint, cfg.eval, images_dir=f"{data.path}/{image_subdir}",
                                    settings=CopyDetectionConfig(originals=originals), output=report_json.path)
    for name, value in result["metrics"].items():
        metrics.log_metric(name, value)
    Path(report.path).write_text(Path(result["report_path"]).with_suffix(".md").read_text())
    push_eval_metrics("copydetection", result["metrics"], gateway=pushgateway, labels={"run": run_id})
    return float(result["metrics"]["copydetection_map"])
