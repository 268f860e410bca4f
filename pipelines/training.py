"""The training pipeline: DVC data version -> DINO pretraining -> evaluation -> gate -> ONNX -> Triton.

Composition only: every step is a component in components/, every rule lives in dino_model.
"""

from typing import List

from kfp import dsl

from components.data import resolve_data_version
from components.deploy import deploy_to_triton, export_onnx, quality_gate
from components.evaluate import attention_maps, eval_davis, eval_knn, eval_linear
from components.train import pretrain
from pipelines.resources import request_gpus, request_resources, use_dvc_credentials


@dsl.pipeline(name="dino-training",
              description="DVC data -> DINO pretraining -> k-NN / linear eval -> quality gate -> ONNX -> Triton")
def dino_training_pipeline(
    repo_root: str = "/workspace/dino-mlops",
    data_version: str = "",
    config_yaml: str = "",
    overrides: List[str] = [],  # noqa: B006 - KFP reads the default from the signature
    train_subdir: str = "digits/train",
    val_subdir: str = "digits/val",
    gpus: int = 1,
    linear_epochs: int = 100,
    linear_lr: float = 0.001,
    davis_root: str = "",
    davis_short_side: int = 480,
    min_knn_top1: float = 50.0,
    require_not_worse: bool = True,
    triton_url: str = "triton.dino-mlops.svc:8001",
    triton_repository: str = "/models/repository",
    model_name: str = "dino",
    triton_flavour: str = "gpu",
):
    data = resolve_data_version(repo_root=repo_root, version=data_version)
    data.set_caching_options(enable_caching=False)  # a new DVC version must never reuse stale outputs
    data.set_display_name("resolve data version")
    use_dvc_credentials(data)

    train = pretrain(data=data.outputs["dataset"], data_md5=data.outputs["Output"], config_yaml=config_yaml,
                     overrides=overrides, train_subdir=train_subdir, gpus=gpus)
    request_gpus(train, gpus)

    knn = eval_knn(model=train.outputs["model"], data=data.outputs["dataset"], train_subdir=train_subdir,
                   val_subdir=val_subdir, config_yaml=config_yaml)
    linear = eval_linear(model=train.outputs["model"], data=data.outputs["dataset"], train_subdir=train_subdir,
                         val_subdir=val_subdir, config_yaml=config_yaml, epochs=linear_epochs,
                         lr=linear_lr)
    attention_maps(model=train.outputs["model"], data=data.outputs["dataset"], image_subdir=val_subdir, n_images=4)
    for task in (knn, linear):
        request_resources(task, cpu="4", memory="16Gi")
    with dsl.If(davis_root != "", name="davis-set-given"):
        davis = eval_davis(model=train.outputs["model"], davis_root=davis_root, short_side=davis_short_side,
                           max_frames=0)
        request_resources(davis, cpu="8", memory="32Gi")

    gate = quality_gate(knn_top1=knn.outputs["Output"], min_top1=min_knn_top1, require_not_worse=require_not_worse,
                        triton_url=triton_url, model_name=model_name)
    gate.set_caching_options(enable_caching=False)  # the serving model changes between runs
    with dsl.If(gate.output == "deploy", name="quality-gate-passed"):
        onnx = export_onnx(model=train.outputs["model"], knn_report=knn.outputs["report_json"],
                           linear_report=linear.outputs["report_json"])
        deploy = deploy_to_triton(onnx=onnx.outputs["onnx"], repository=triton_repository, triton_url=triton_url,
                                  model_name=model_name, flavour=triton_flavour)
        deploy.set_caching_options(enable_caching=False)
