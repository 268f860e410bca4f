"""Evaluation components: k-NN, linear probe, DAVIS label propagation, attention maps, image
retrieval and copy detection.

Each wraps one dino_model evaluation; scores go to Metrics (flat name -> number, what the KFP UI
and the quality gate read), class confusion to ClassificationMetrics, reports to Markdown/HTML.
k-NN and the linear probe run with the config saved in the trained checkpoint plus the run's
`overrides` (dino_model.eval.settings.pipeline_eval_config): an `eval.*` override applies, and the
model is evaluated at the resolution it was trained at (retrieval and copy detection too). `config`
and `config_yaml` only matter for a checkpoint that saved no config.

The images come by reference (`data_ref`, the data step's output): each step materialises only the
folders it reads from the DVC remote into the data cache. The steps take no run id and push nothing,
so KFP can reuse them; the pipeline's push steps label their Metrics with the run.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Input, Markdown, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_knn(model: Input[Model], data_ref: str, train_subdir: str, val_subdir: str, config: str,
             config_yaml: str, overrides: List[str], metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], report: Output[Markdown], report_json: Output[Artifact]
             ) -> float:
    """Weighted k-NN (DINO protocol) on frozen teacher features; returns top-1 (%) at k = 20.
    """
    from dino_model.eval.knn_run import run_knn_eval
    from dino_model.eval.report import publish
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.versioning.mirror import local_folders

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    data = local_folders(data_ref, train_subdir, val_subdir)
    result = run_knn_eval(checkpoint, cfg.eval, train_dir=f"{data}/{train_subdir}",
                          val_dir=f"{data}/{val_subdir}", output=report_json.path)
    confusion.log_confusion_matrix(result["details"]["classes"], result["details"]["confusion_matrix"])
    return publish(result, metrics, report.path, "knn_top1")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_linear(model: Input[Model], data_ref: str, train_subdir: str, val_subdir: str, config: str,
                config_yaml: str, overrides: List[str], epochs: int, lr: float,
                metrics: Output[Metrics], report: Output[Markdown], report_json: Output[Artifact]) -> float:
    """Linear probe on frozen centre-crop features (extracted once); returns the best top-1 (%).

    `lr` is per 256 images (official: 0.001 for ImageNet; small sets with cached features need ~1.0).
    """
    from dino_model.eval.linear import LinearProbeConfig
    from dino_model.eval.linear_run import run_linear_eval
    from dino_model.eval.report import publish
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.versioning.mirror import local_folders

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    probe = LinearProbeConfig(epochs=epochs, lr=lr, augment=False)
    data = local_folders(data_ref, train_subdir, val_subdir)
    result = run_linear_eval(checkpoint, cfg.eval, train_dir=f"{data}/{train_subdir}",
                             val_dir=f"{data}/{val_subdir}", probe=probe, output=report_json.path)
    return publish(result, metrics, report.path, "linear_top1")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def attention_maps(model: Input[Model], data_ref: str, image_subdir: str, n_images: int,
                   maps: Output[HTML]) -> None:
    """Last-layer CLS attention per head (60% mass masks) on a few images, as an HTML page."""
    from dino_model.eval.attention_page import attention_html
    from dino_model.versioning.mirror import local_folders

    data = local_folders(data_ref, image_subdir)
    attention_html(f"{model.path}/checkpoint.pth", f"{data}/{image_subdir}", maps.path, n_images=n_images)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_davis(model: Input[Model], davis_root: str, short_side: int, max_frames: int, metrics: Output[Metrics],
               results: Output[Artifact], report: Output[Markdown]) -> float:
    """DAVIS 2017 semi-supervised label propagation, scored as the official evaluation; returns J&F-Mean.

    `short_side`/`max_frames` of 0 keep the official full resolution and every frame.
    """
    from dino_model.eval.davis.config import DavisConfig
    from dino_model.eval.davis.run import run_davis_eval
    from dino_model.eval.report import publish

    cfg = DavisConfig(short_side=short_side or 480, max_frames=max_frames or None)
    result = run_davis_eval(f"{model.path}/checkpoint.pth", cfg, davis_root=davis_root, output_dir=results.path)
    return publish(result, metrics, report.path, "davis_jf_mean")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_retrieval(model: Input[Model], data_ref: str, val_subdir: str, config: str, config_yaml: str,
                   overrides: List[str], metrics: Output[Metrics],
                   report: Output[Markdown], report_json: Output[Artifact]) -> float:
    """Leave-one-out image retrieval on the labelled validation folder (frozen teacher CLS features,
    relevance = same class); returns the mAP (%).
    """
    from dino_model.eval.report import publish
    from dino_model.eval.retrieval_run import run_retrieval_eval
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.versioning.mirror import local_folders

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    data = local_folders(data_ref, val_subdir)
    result = run_retrieval_eval(checkpoint, cfg.eval, database_dir=f"{data}/{val_subdir}",
                                output=report_json.path)
    return publish(result, metrics, report.path, "retrieval_map")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def eval_copydetection(model: Input[Model], data_ref: str, image_subdir: str, originals: int, config: str,
                       config_yaml: str, overrides: List[str],
                       metrics: Output[Metrics], report: Output[Markdown], report_json: Output[Artifact]) -> float:
    """Copy detection on `image_subdir`: `originals` seeded images edited into queries, the rest distractors
    (CLS + GeM features, whitening learned on the distractors); returns the mAP (%).
    """
    from dino_model.eval.copydetection_run import run_copydetection_eval
    from dino_model.eval.report import publish
    from dino_model.eval.search_settings import CopyDetectionConfig
    from dino_model.eval.settings import pipeline_eval_config
    from dino_model.versioning.mirror import local_folders

    checkpoint = f"{model.path}/checkpoint.pth"
    cfg = pipeline_eval_config(checkpoint, config, config_yaml, overrides)
    data = local_folders(data_ref, image_subdir)
    result = run_copydetection_eval(checkpoint, cfg.eval, images_dir=f"{data}/{image_subdir}",
                                    settings=CopyDetectionConfig(originals=originals), output=report_json.path)
    return publish(result, metrics, report.path, "copydetection_map")
