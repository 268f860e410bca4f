"""Release components: the quality gate, ONNX export, and deployment to Triton with rollback."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def quality_gate(knn_top1: float, min_top1: float, require_not_worse: bool, triton_url: str,
                 model_name: str) -> str:
    """"deploy" when k-NN top-1 reaches `min_top1` and is not worse than the serving model's, else "hold"."""
    import logging

    from dino_model.serving.gate import decide, serving_score

    serving = serving_score(triton_url, model_name, "knn_top1") if require_not_worse else None
    decision = decide(knn_top1, threshold=min_top1, serving=serving, require_not_worse=require_not_worse)
    logging.getLogger("quality_gate").warning("quality gate: %s (%s)", decision.decision, decision.reason)
    return decision.decision


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_onnx(model: Input[Model], knn_report: Input[Artifact], linear_report: Input[Artifact],
                onnx: Output[Model], parity: Output[Metrics]) -> None:
    """Teacher backbone -> one self-contained .onnx with the preprocessing contract; PyTorch parity checked.

    The evaluation reports become the model's lineage metrics (read by the quality gate of later runs).
    """
    from pathlib import Path

    from dino_model.export.export_run import ExportOptions, export_checkpoint

    Path(onnx.path).mkdir(parents=True, exist_ok=True)
    options = ExportOptions(metrics_reports=[knn_report.path, linear_report.path])
    report = export_checkpoint(f"{model.path}/checkpoint.pth", f"{onnx.path}/model.onnx", options)
    onnx.metadata.update({"framework": "onnx", "data_version": model.metadata.get("data_version", "")})
    for name, value in report["metrics"].items():
        parity.log_metric(name, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy_to_triton(onnx: Input[Model], repository: str, triton_url: str, model_name: str, flavour: str) -> int:
    """Add the model as version N+1 of a live Triton, smoke-test it, retire N; N keeps serving on failure.

    The lineage (data md5, code revision, evaluation metrics) travels inside the ONNX metadata.
    """
    from dino_model.serving.release import release

    result = release(f"{onnx.path}/model.onnx", repository, url=triton_url, model_name=model_name, flavour=flavour)
    return int(result["version"])
