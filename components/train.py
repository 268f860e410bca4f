"""Pretraining components: DINO on 1..N GPUs of one node (torchrun), as dino_model trains it, or on several
nodes as a Kubeflow Trainer v2 TrainJob or Training Operator v1 PyTorchJob launched from this step, whose
checkpoint comes back as the same model folder (checkpoint.pth, config.yaml, metrics.jsonl)."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(data: Input[Dataset], data_md5: str, data_rev: str, config: str, config_yaml: str,
             overrides: List[str], train_subdir: str, gpus: int, pushgateway: str, run_id: str,
             model: Output[Model], metrics: Output[Metrics]) -> None:
    """Train on `data`/`train_subdir` with the packaged `config` (or `config_yaml`) and `overrides`.

    `gpus` processes run under torchrun (one per GPU; 0 or 1 trains in this process). Training
    metrics go to the Pushgateway at `pushgateway` under the label run=`run_id`.
    """
    import os

    from dino_model.config import pipeline_config
    from dino_model.train.worker import launch_training

    os.environ.update({"DINO_PUSHGATEWAY": pushgateway, "DINO_RUN_ID": run_id})  # torchrun workers inherit
    step = [f"data.root={data.path}/{train_subdir}", f"train.output_dir={model.path}", f"data.version={data_md5}",
            f"data.revision={data_rev}"]
    cfg = pipeline_config(config, config_yaml, [*overrides, *step])
    result = launch_training(cfg, nproc=max(gpus, 1))
    model.metadata.update({"data_version": data_md5, "data_revision": data_rev, "checkpoint": result["checkpoint"],
                           "arch": cfg.model.arch})
    for name, value in result["final_metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gpu_placement(gpus: int) -> NamedTuple("Placement", [("node_selector", dict), ("tolerations", list)]):
    """Where pretraining may run: a GPU node (tainted GPU pools tolerated) when `gpus` > 0, else anywhere."""
    from collections import namedtuple

    from dino_model.train.placement import gpu_node_selector, gpu_tolerations

    return namedtuple("Placement", ["node_selector", "tolerations"])(gpu_node_selector(gpus), gpu_tolerations(gpus))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain_on_cluster(run_id: str, model: Output[Model], metrics: Output[Metrics],
                        operator: str = "trainer-v2", config: str = "", config_yaml: str = "",
                        overrides: List[str] = [],  # noqa: B006 - KFP reads the default from the signature
                        data_md5: str = "", data_rev: str = "", overlay: str = "prod-gpu", template_yaml: str = "",
                        runtime_yaml: str = "", nodes: int = 2, nproc_per_node: int = 8, gpus: bool = True,
                        data_root: str = "", data_claim: str = "", data_subpath: str = "", namespace: str = "",
                        image: str = "", pushgateway: str = "", timeout_hours: float = 168.0,
                        runs_mount: str = "/runs") -> None:
    """Train on `nodes` nodes as the job `dino-pretrain-<run_id>`, wait, and copy its checkpoint into `model`.

    `operator`: trainer-v2 (a TrainJob on the TrainingRuntime of k8s/jobs/trainjob, or `runtime_yaml`
    rendered) or training-operator-v1 (a PyTorchJob). Both are built from k8s/jobs/pretrain as `overlay`
    renders it (or `template_yaml`); the config is the packaged `config` or `config_yaml` when given,
    else the overlay's, with `overrides`. `nproc_per_node` processes per node, on as many GPUs when
    `gpus`; 0 trains one process per node on CPU. `data_root` (under /data) and the claims default to
    the config's and template's. A retried step adopts the job of the same run id. The run folder
    /runs/<job> is read where this step mounts the runs claim (`runs_mount`).
    """
    from dino_model.config import pipeline_config
    from dino_model.logs import read_jsonl
    from dino_model.train import cluster

    options = cluster.JobOptions(
        name=cluster.job_name(run_id), nodes=nodes, nproc_per_node=max(nproc_per_node, 1),
        gpus=gpus and nproc_per_node > 0, image=image or None, namespace=namespace or None,
        data_claim=data_claim or None, data_subpath=data_subpath or None,
        env=cluster.env_pairs({"DINO_RUN_ID": run_id, "DINO_PUSHGATEWAY": pushgateway}))
    cluster.validate_options(options)
    cluster.check_operator(operator)
    resources = cluster.parse_rendered(template_yaml) if template_yaml.strip() else cluster.render_overlay(overlay)
    runtime = (cluster.parse_rendered(runtime_yaml) if runtime_yaml.strip() else cluster.render_runtime()) \
        if operator == cluster.TRAINER_V2 else None
    lineage = [f"data.version={data_md5}", f"data.revision={data_rev}"] if data_md5 else []
    cfg = pipeline_config(config, config_yaml, [*overrides, *lineage]) if (config or config_yaml.strip()) else None
    result = cluster.launch(resources, options, cfg, operator=operator, runtime=runtime,
                            overrides=[*overrides, *lineage], data_root=data_root or None,
                            timeout_s=timeout_hours * 3600)
    checkpoint = cluster.fetch_run(f"{runs_mount}/{result['job']}", model.path)
    model.metadata.update({**{k: result[k] for k in ("job", "kind", "namespace", "nodes", "nproc_per_node", "arch")},
                           "data_version": result["data_version"], "data_revision": data_rev,
                           "checkpoint": str(checkpoint), "runs_claim": result["runs_claim"]})
    for name, value in (read_jsonl(f"{model.path}/metrics.jsonl") or [{}])[-1].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, value)
