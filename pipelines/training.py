"""The training pipeline: DVC data version -> DINO pretraining -> evaluation -> gate -> ONNX -> Triton.

Composition only: every step is a component in components/, every rule lives in dino_model. The
defaults are one recipe, the paper's ViT-S/16 on one node of 8 GPUs over an ImageNet-layout data
repository (train/ and val/ class folders); the local run (`pipeline run --local`) passes the
digits demo recipe instead. Parameter descriptions come from the docstring's Args section, which
the KFP UI shows beside each field.
"""

from typing import List

from kfp import dsl
from kfp.dsl import PipelineTask

from components._image import IMAGE
from components.data import resolve_data_version
from components.deploy import deploy_to_triton, export_onnx, quality_gate
from components.evaluate import (
    attention_maps,
    eval_copydetection,
    eval_davis,
    eval_knn,
    eval_linear,
    eval_retrieval,
)
from components.report import push_run_metrics, report_run_status
from components.train import gpu_placement, pretrain, pretrain_on_cluster, resolve_served_weights
from pipelines.resources import (
    read_data,
    read_triton_repository,
    request_gpus,
    request_resources,
    retry_transient,
    use_data_repo_credentials,
    use_dvc_credentials,
    use_lineage_public_keys,
    use_lineage_signing_key,
    use_runs_claim,
    use_triton_repository,
)

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # only for steps that never cache (tests/pipelines/test_cache_ir.py)
PIPELINE_NAME = "dino-training"


def _never_cached(task: PipelineTask, name: str) -> PipelineTask:
    return task.set_caching_options(enable_caching=False).set_display_name(name)


def _reporting(task: PipelineTask, name: str) -> PipelineTask:
    """A step that reports the run (run id in, nothing reused): never cached, retried, small."""
    return retry_transient(request_resources(_never_cached(task, name), cpu="100m", memory="256Mi", scratch="64Mi"))


def _push(task: PipelineTask, kind: str, pushgateway) -> PipelineTask:
    """The uncached step that pushes `task`'s Metrics labelled with this run (`task` itself may be reused)."""
    push = push_run_metrics(metrics=task.outputs["metrics"], kind=kind, pushgateway=pushgateway, run_id=RUN_ID)
    return _reporting(push, f"push {kind} metrics")


@dsl.pipeline(name=PIPELINE_NAME,
              description="DVC data -> DINO pretraining -> k-NN / linear eval -> quality gate -> ONNX -> Triton")
def dino_training_pipeline(
    data_repo: str = "",
    data_version: str = "",
    dvc_remote: str = "",
    dvc_endpoint_url: str = "",
    config: str = "paper_vit_small",
    config_yaml: str = "",
    overrides: List[str] = [],  # noqa: B006 - KFP reads the default from the signature
    train_subdir: str = "train",
    val_subdir: str = "val",
    captured_subdir: str = "captured",
    init_from_serving: bool = False,
    gpus: int = 8,
    nodes: int = 1,
    training_operator: str = "trainer-v2",
    cluster_data_root: str = "/data/train",
    linear_epochs: int = 100,
    linear_lr: float = 0.001,
    davis_root: str = "",
    davis_short_side: int = 480,
    search_evals: bool = False,
    min_knn_top1: float = 70.0,
    require_not_worse: bool = True,
    gate_tolerance: float = 0.0,
    triton_url: str = "triton-grpc.dino-mlops.svc:8001",
    triton_repository: str = "/models/repository",
    model_name: str = "dino",
    triton_flavour: str = "gpu",
    pushgateway: str = "prometheus-pushgateway.monitoring.svc:9091",
):
    """Pretrain DINO on one DVC data version, evaluate it, and serve it on Triton when it passes the gate.

    Args:
        data_repo: Git URL of the data repository (git + DVC); HTTPS credentials come from the
            `data-repo-credentials` Secret (username, token).
        data_version: Data version to train on: a git revision (branch, tag, commit) or a DVC md5;
            empty takes the default branch's data.dvc.
        dvc_remote: DVC remote to pull from (a mounted path or s3://bucket/prefix); empty uses the
            repository's default remote. S3 credentials come from the `dvc-remote-credentials` Secret.
        dvc_endpoint_url: S3-compatible endpoint for an s3:// remote (MinIO, Ceph); empty for AWS.
        config: Packaged training config by name (paper_vit_small, digits_vit_tiny, tiny).
        config_yaml: A whole training config as YAML; when given it replaces `config`.
        overrides: Config overrides such as ["train.epochs=100", "optim.base_lr=0.0005"].
        train_subdir: Folder of the data version holding the training images (class sub-folders).
        val_subdir: Folder of the data version holding the labelled validation images.
        captured_subdir: Folder of the data version holding images captured in production (the data
            flywheel's `captured/<day>/`, unlabelled): one-node pretraining trains on it beside
            `train_subdir` when the version holds it, and the drift reference samples both; empty
            disables. The multi-node branch reads `cluster_data_root` only, without captured images.
        init_from_serving: Start one-node pretraining from the weights of the version Triton serves now
            (its backbone.safetensors; fresh heads with train.init_parts=auto) instead of random ones;
            from scratch when nothing is served. The multi-node branch always starts from scratch.
        gpus: GPUs of one node for pretraining (one process each); 0 trains on CPU on any node.
        nodes: Nodes for pretraining; above 1 the run trains as one distributed job (`gpus` per node)
            launched on the cluster and waited for, its checkpoint copied back as the model.
        training_operator: With nodes > 1, which operator runs the job: trainer-v2 (Kubeflow Trainer
            v2 TrainJob on the `dino-pretrain` TrainingRuntime) or training-operator-v1 (PyTorchJob).
        cluster_data_root: With nodes > 1, the folder under /data (the `dino-datasets` claim) holding
            this data version's training images (the prod-gpu overlay's is /data/train).
        linear_epochs: Epochs of the linear probe (official: 100).
        linear_lr: Linear-probe learning rate per 256 images (official: 0.001).
        davis_root: DAVIS 2017 folder on a mounted volume; empty skips the video segmentation evaluation.
        davis_short_side: Frame short side for DAVIS (official: 480).
        search_evals: Also run image retrieval (leave-one-out on the validation folder) and copy
            detection (100 validation images edited into queries, the rest distractors).
        min_knn_top1: Quality gate: the k-NN top-1 (%) a model needs to be deployed (the paper's
            ViT-S/16 reaches 69.3 after 100 epochs and 74.5 after 300).
        require_not_worse: Quality gate: also require k-NN top-1 not below the serving model's.
        gate_tolerance: Quality gate: with require_not_worse, the k-NN top-1 points a model may fall below
            the serving model's and still deploy (0: not below at all).
        triton_url: Triton's gRPC endpoint (host:port); the headless Service, whose name resolves to
            every ready Triton pod, so that the deploy step switches all replicas.
        triton_repository: Model repository on the `triton-models` claim (mounted at /models in the quality
            gate and deploy steps), the folder Triton serves.
        model_name: Name of the served model.
        triton_flavour: gpu (onnxruntime backend on GPU) or cpu (Python backend running onnxruntime).
        pushgateway: Prometheus Pushgateway (host:port) for training, evaluation and deployment
            metrics, labelled with the run id; empty disables pushing.
    """
    status = report_run_status(pipeline=PIPELINE_NAME, run_id=RUN_ID, pushgateway=pushgateway)
    _reporting(status, "record run status")
    with dsl.ExitHandler(status, name="training-run"):
        data = resolve_data_version(data_repo=data_repo, version=data_version, dvc_remote=dvc_remote,
                                    dvc_endpoint_url=dvc_endpoint_url, pushgateway=pushgateway)
        _never_cached(data, "resolve data version")  # a new DVC version must be seen by every run
        retry_transient(request_resources(data, cpu="1", memory="2Gi", scratch="10Gi"))
        use_dvc_credentials(data)
        use_data_repo_credentials(data)
        ref = data.outputs["reference"]  # a string: its value, not a new artifact, enters the cache keys

        # Pretraining: one node in this step, or (nodes > 1) one distributed job launched on the cluster
        with dsl.If(nodes > 1, name="multi-node"):
            distributed = pretrain_on_cluster(
                operator=training_operator, config=config, config_yaml=config_yaml, overrides=overrides,
                data_md5=data.outputs["md5"], data_rev=data.outputs["git_rev"], data_root=cluster_data_root,
                nodes=nodes, nproc_per_node=gpus, gpus=True, image=IMAGE, pushgateway=pushgateway)
            distributed.set_display_name("DINO pretraining on the cluster")
            use_runs_claim(request_resources(distributed, cpu="1", memory="4Gi"))
            _push(distributed, "train", pushgateway)
        with dsl.Else(name="one-node"):
            placement = gpu_placement(gpus=gpus).set_display_name("GPU placement")
            request_resources(placement, cpu="100m", memory="256Mi", scratch="64Mi")
            served = resolve_served_weights(enabled=init_from_serving, triton_url=triton_url, model_name=model_name,
                                            triton_repository=triton_repository)
            _never_cached(served, "served weights")  # the serving model changes between runs
            retry_transient(request_resources(served, cpu="500m", memory="1Gi"), retries=2)
            use_lineage_public_keys(use_triton_repository(served))  # as the gate: finishes a killed deploy first
            train = pretrain(data_ref=ref, config=config, config_yaml=config_yaml, overrides=overrides,
                             train_subdir=train_subdir, gpus=gpus, pushgateway=pushgateway,
                             captured_subdir=captured_subdir, init_weights=served.outputs["path"],
                             init_sha256=served.outputs["sha256"])
            read_data(request_gpus(train.set_display_name("DINO pretraining"), gpus, placement))
            read_triton_repository(train)  # the served weights, by the path and sha256 resolved above
            _push(train, "train", pushgateway)
        model = dsl.OneOf(distributed.outputs["model"], train.outputs["model"])

        scored = dict(model=model, data_ref=ref, train_subdir=train_subdir, val_subdir=val_subdir, config=config,
                      config_yaml=config_yaml, overrides=overrides)
        knn = eval_knn(**scored).set_display_name("k-NN evaluation")
        linear = eval_linear(**scored, epochs=linear_epochs, lr=linear_lr).set_display_name("linear probe")
        maps = attention_maps(model=model, data_ref=ref, image_subdir=val_subdir, n_images=4)
        maps.set_display_name("attention maps")
        for task, kind in ((knn, "knn"), (linear, "linear")):
            read_data(request_resources(task, cpu="4", memory="16Gi"))
            _push(task, kind, pushgateway)
        read_data(request_resources(maps, cpu="2", memory="4Gi"))
        with dsl.If(davis_root != "", name="davis-set-given"):
            davis = eval_davis(model=model, davis_root=davis_root, short_side=davis_short_side, max_frames=0)
            request_resources(davis.set_display_name("DAVIS video segmentation"), cpu="8", memory="32Gi")
            _push(davis, "davis", pushgateway)
        with dsl.If(search_evals == True, name="search-evals-asked"):  # noqa: E712 - a KFP condition, not Python
            searched = {k: v for k, v in scored.items() if k not in ("train_subdir", "val_subdir")}
            retrieval = eval_retrieval(**searched, val_subdir=val_subdir).set_display_name("image retrieval")
            copies = eval_copydetection(**searched, image_subdir=val_subdir, originals=100)
            copies.set_display_name("copy detection")
            for task, kind in ((retrieval, "retrieval"), (copies, "copydetection")):
                read_data(request_resources(task, cpu="4", memory="16Gi"))
                _push(task, kind, pushgateway)

        gate = quality_gate(knn_top1=knn.outputs["Output"], min_top1=min_knn_top1,
                            require_not_worse=require_not_worse, triton_url=triton_url, model_name=model_name,
                            triton_repository=triton_repository, tolerance=gate_tolerance)
        _never_cached(gate, "quality gate")  # the serving model changes between runs
        retry_transient(request_resources(gate, cpu="500m", memory="1Gi"), retries=2)
        use_lineage_public_keys(gate)
        use_triton_repository(gate)  # to finish a deploy that was killed before reading the serving model's score
        with dsl.If(gate.output == "deploy", name="quality-gate-passed"):
            onnx = export_onnx(model=model, data_ref=ref, train_subdir=train_subdir, captured_subdir=captured_subdir,
                               knn_report=knn.outputs["report_json"], linear_report=linear.outputs["report_json"])
            read_data(request_resources(onnx.set_display_name("export ONNX"), cpu="2", memory="8Gi"))
            use_lineage_signing_key(onnx)
            deploy = deploy_to_triton(onnx=onnx.outputs["onnx"], repository=triton_repository,
                                      triton_url=triton_url, model_name=model_name, flavour=triton_flavour,
                                      pushgateway=pushgateway)
            _never_cached(deploy, "deploy to Triton")
            retry_transient(request_resources(deploy, cpu="500m", memory="2Gi", scratch="20Gi"))
            use_triton_repository(deploy)
            use_lineage_public_keys(deploy)

