"""The training pipeline: DVC data version -> DINO pretraining -> evaluation -> gate -> ONNX -> Triton.

Composition only: every step is a component in components/, every rule lives in dino_model. The
defaults are one recipe, the paper's ViT-S/16 on one node of 8 GPUs over an ImageNet-layout data
repository (train/ and val/ class folders); the local run (`pipeline run --local`) passes the
digits demo recipe instead. Parameter descriptions come from the docstring's Args section, which
the KFP UI shows beside each field.
"""

from typing import List

from kfp import dsl

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
from components.train import gpu_placement, pretrain, pretrain_on_cluster
from pipelines.resources import (
    request_gpus,
    request_resources,
    use_data_repo_credentials,
    use_dvc_credentials,
    use_lineage_public_keys,
    use_lineage_signing_key,
    use_runs_claim,
    use_triton_repository,
)

RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER


@dsl.pipeline(name="dino-training",
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
        triton_url: Triton's gRPC endpoint (host:port); the headless Service, whose name resolves to
            every ready Triton pod, so that the deploy step switches all replicas.
        triton_repository: Model repository on the `triton-models` claim (mounted at /models in the quality
            gate and deploy steps), the folder Triton serves.
        model_name: Name of the served model.
        triton_flavour: gpu (onnxruntime backend on GPU) or cpu (Python backend running onnxruntime).
        pushgateway: Prometheus Pushgateway (host:port) for training, evaluation and deployment
            metrics, labelled with the run id; empty disables pushing.
    """
    data = resolve_data_version(data_repo=data_repo, version=data_version, dvc_remote=dvc_remote,
                                dvc_endpoint_url=dvc_endpoint_url, pushgateway=pushgateway)
    data.set_caching_options(enable_caching=False)  # a new DVC version must never reuse stale outputs
    data.set_display_name("resolve data version")
    use_dvc_credentials(data)
    use_data_repo_credentials(data)
    dataset, md5, rev = data.outputs["dataset"], data.outputs["md5"], data.outputs["git_rev"]

    # Pretraining: one node in this step, or (nodes > 1) one distributed job launched on the cluster
    with dsl.If(nodes > 1, name="multi-node"):
        distributed = pretrain_on_cluster(
            run_id=RUN_ID, operator=training_operator, config=config, config_yaml=config_yaml, overrides=overrides,
            data_md5=md5, data_rev=rev, data_root=cluster_data_root, nodes=nodes, nproc_per_node=gpus, gpus=True,
            image=IMAGE, pushgateway=pushgateway).set_display_name("pretrain on the cluster")
        use_runs_claim(request_resources(distributed, cpu="1", memory="4Gi"))
    with dsl.Else(name="one-node"):
        placement = gpu_placement(gpus=gpus).set_display_name("GPU placement")
        train = pretrain(data=dataset, data_md5=md5, data_rev=rev, config=config, config_yaml=config_yaml,
                         overrides=overrides, train_subdir=train_subdir, gpus=gpus, pushgateway=pushgateway,
                         run_id=RUN_ID)
        request_gpus(train, gpus, placement)
    model = dsl.OneOf(distributed.outputs["model"], train.outputs["model"])

    scored = dict(model=model, data=dataset, train_subdir=train_subdir, val_subdir=val_subdir, config=config,
                  config_yaml=config_yaml, overrides=overrides, pushgateway=pushgateway, run_id=RUN_ID)
    knn = eval_knn(**scored)
    linear = eval_linear(**scored, epochs=linear_epochs, lr=linear_lr)
    attention_maps(model=model, data=dataset, image_subdir=val_subdir, n_images=4)
    for task in (knn, linear):
        request_resources(task, cpu="4", memory="16Gi")
    with dsl.If(davis_root != "", name="davis-set-given"):
        davis = eval_davis(model=model, davis_root=davis_root, short_side=davis_short_side, max_frames=0,
                           pushgateway=pushgateway, run_id=RUN_ID)
        request_resources(davis, cpu="8", memory="32Gi")
    with dsl.If(search_evals == True, name="search-evals-asked"):  # noqa: E712 - a KFP condition, not Python
        searched = {k: v for k, v in scored.items() if k not in ("train_subdir", "val_subdir")}
        retrieval = eval_retrieval(**searched, val_subdir=val_subdir)
        copies = eval_copydetection(**searched, image_subdir=val_subdir, originals=100)
        for task in (retrieval, copies):
            request_resources(task, cpu="4", memory="16Gi")

    gate = quality_gate(knn_top1=knn.outputs["Output"], min_top1=min_knn_top1, require_not_worse=require_not_worse,
                        triton_url=triton_url, model_name=model_name, triton_repository=triton_repository)
    gate.set_caching_options(enable_caching=False)  # the serving model changes between runs
    use_lineage_public_keys(gate)
    use_triton_repository(gate)  # to finish a deploy that was killed before reading the serving model's score
    with dsl.If(gate.output == "deploy", name="quality-gate-passed"):
        onnx = export_onnx(model=model, data=dataset, train_subdir=train_subdir, knn_report=knn.outputs["report_json"],
                           linear_report=linear.outputs["report_json"])
        use_lineage_signing_key(onnx)
        deploy = deploy_to_triton(onnx=onnx.outputs["onnx"], repository=triton_repository, triton_url=triton_url,
                                  model_name=model_name, flavour=triton_flavour, pushgateway=pushgateway)
        deploy.set_caching_options(enable_caching=False)
        use_triton_repository(deploy)
        use_lineage_public_keys(deploy)
