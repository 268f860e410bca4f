"""Release components: the quality gate, ONNX export, and deployment to Triton with rollback."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def quality_gate(knn_top1: float, min_top1: float, require_not_worse: bool, triton_url: str,
                 model_name: str, triton_repository: str = "", tolerance: float = 0.0) -> str:
    """"deploy" when k-NN top-1 reaches `min_top1` and is not more than `tolerance` points below the serving
    model's, else "hold".

    The serving model's score is read only from lineage whose signature a key of $DINO_LINEAGE_PUBLIC_KEYS
    (Secret lineage-signing-key) verifies; without it only `min_top1` applies. Given `triton_repository`
    (the claim Triton serves from, with the admin key, as the deploy step has them), a deploy that was
    killed midway is finished first; without it, a server that shows an unfinished deploy fails the step
    (gate.served_lineage).
    """
    import logging

    from dino_model.serving.client import replica_urls
    from dino_model.serving.gate import DEPLOY, decide, serving_score

    serving = None
    if require_not_worse:
        replicas = replica_urls(triton_url) if triton_repository else ()
        serving = serving_score(triton_url, model_name, "knn_top1", repository=triton_repository or None,
                                replicas=replicas)
    decision = decide(knn_top1, threshold=min_top1, serving=serving, require_not_worse=require_not_worse,
                      tolerance=tolerance)
    log = logging.getLogger("quality_gate")
    # a pass is routine (INFO), a hold needs a look (WARNING); the logger's own INFO level keeps the pass
    # in the step's log whatever the root level (kfp's executor_main sets INFO on stdout)
    log.setLevel(logging.INFO)
    level = logging.INFO if decision.decision == DEPLOY else logging.WARNING
    log.log(level, "quality gate: %s (%s)", decision.decision, decision.reason)
    return decision.decision


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_onnx(model: Input[Model], data_ref: str, train_subdir: str, knn_report: Input[Artifact],
                linear_report: Input[Artifact], onnx: Output[Model], parity: Output[Metrics],
                captured_subdir: str = "") -> None:
    """Teacher backbone -> one self-contained .onnx with the preprocessing contract; PyTorch parity checked.

    The evaluation reports become the model's lineage metrics (read by the quality gate of later runs);
    a sample of the training images (materialised by reference, `data_ref`: `train_subdir` and, when the
    version holds it, `captured_subdir`, sampled over their union as pretraining read them) becomes the
    drift reference served beside the model; the newest captured images are scored against it, and their
    drift ratio (mmd2 / threshold, what DinoEmbeddingDrift compares with 1) is logged to `parity` as
    captured_drift_ratio (with captured_drift_images). The teacher backbone is also written as model.safetensors,
    which deploy keeps in the version folder: a later retraining starts from it (init_from_serving).
    The file's sha256, lineage and their signature (made with the private key of the Secret
    lineage-signing-key, $DINO_LINEAGE_SIGNING_KEY) go into the artifact's metadata, which KFP keeps in
    its metadata store, away from the bucket holding the file: deploy_to_triton checks the file and the
    signature against it.
    """
    from pathlib import Path

    from dino_model.export.export_run import ExportOptions, export_checkpoint
    from dino_model.export.lineage import LineageRecord
    from dino_model.export.safetensors_run import export_safetensors
    from dino_model.export.signing import Signature
    from dino_model.triton.repository import weights_path
    from dino_model.versioning.mirror import extra_training_roots, local_folders

    Path(onnx.path).mkdir(parents=True, exist_ok=True)
    reports = [knn_report.path, linear_report.path]
    captured = extra_training_roots(data_ref, captured_subdir) if captured_subdir else []
    drift = [f"{local_folders(data_ref, train_subdir)}/{train_subdir}", *captured]
    checkpoint, output = f"{model.path}/checkpoint.pth", f"{onnx.path}/model.onnx"
    report = export_checkpoint(checkpoint, output, ExportOptions(metrics_reports=reports, drift_images=drift,
                                                                 score_drift_on=captured))
    weights = export_safetensors(checkpoint, weights_path(output), ExportOptions(metrics_reports=reports))
    fp32 = report["details"]["files"]["fp32"]
    record = LineageRecord(sha256=fp32["sha256"], lineage=report["details"]["lineage"],
                           signature=Signature.from_dict(fp32.get("signature")))
    onnx.metadata.update({"framework": "onnx", "data_version": model.metadata.get("data_version", ""),
                          "weights_sha256": weights["sha256"], **record.to_metadata()})
    for name, value in report["metrics"].items():
        parity.log_metric(name, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy_to_triton(onnx: Input[Model], repository: str, triton_url: str, model_name: str, flavour: str,
                     pushgateway: str) -> int:
    """Add the model as version N+1 of a live Triton, smoke-test it, retire N; N keeps serving on failure.

    `repository` is the model repository on the claim Triton serves from (mounted here read-write);
    `triton_url` names every Triton replica: a headless Service resolves to one address per ready pod, and
    each step of the switch is taken on all of them. The admin key comes from the Secret triton-admin-key
    ($TRITON_ADMIN_KEY). The lineage (data md5 and git revision, code revision, evaluation metrics) travels
    inside the ONNX metadata, and is served as verified only when the file's sha256 matches the one
    export_onnx recorded in the artifact's metadata and a public key of $DINO_LINEAGE_PUBLIC_KEYS (Secret
    lineage-signing-key) verifies the signature recorded there; a file changed since export is refused,
    an unsigned or forged record serves the lineage unverified. A successful
    deployment is recorded at the Pushgateway `pushgateway`.
    """
    from dino_model.export.lineage import LineageRecord
    from dino_model.serving.client import replica_urls
    from dino_model.serving.deploy import deploy

    record = LineageRecord.from_metadata(onnx.metadata, source=f"the pipeline's metadata of {onnx.uri}")
    result = deploy(f"{onnx.path}/model.onnx", repository, url=triton_url, model_name=model_name, flavour=flavour,
                     record=record, gateway=pushgateway, replicas=replica_urls(triton_url))
    return int(result["version"])
