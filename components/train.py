"""Pretraining components: DINO on 1..N GPUs of one node (torchrun), as dino_model trains it, or on several
nodes as a Kubeflow Training Operator PyTorchJob launched from this step."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(data_ref: str, config: str, config_yaml: str, overrides: List[str], train_subdir: str, gpus: int,
             pushgateway: str, model: Output[Model], metrics: Output[Metrics]) -> None:
    """Train on `train_subdir` of the data version `data_ref` (the data step's reference) with the packaged
    `config` (or `config_yaml`) and `overrides`.

    The images come from the DVC remote: streamed when `train_subdir` holds tar shards (each process
    reads its own), else materialised once into the data cache. `gpus` processes run under torchrun
    (0 or 1 trains in this process). Epoch metrics go live to the Pushgateway `pushgateway` labelled
    with this training's own id (a cached step takes no run id); the run's push step relabels the result.
    """
    import os

    from dino_model.config import pipeline_config
    from dino_model.runtime.digests import work_id
    from dino_model.train.worker import launch_training
    from dino_model.versioning.mirror import training_root
    from dino_model.versioning.reference import DataReference

    ref = DataReference.from_json(data_ref)
    label = work_id("pretrain", data_ref, config, config_yaml, *overrides)
    os.environ.update({"DINO_PUSHGATEWAY": pushgateway, "DINO_RUN_ID": label})  # torchrun workers inherit
    step = [f"data.root={training_root(data_ref, train_subdir)}", f"train.output_dir={model.path}",
            f"data.version={ref.md5}", f"data.revision={ref.git_rev}"]
    cfg = pipeline_config(config, config_yaml, [*overrides, *step])
    result = launch_training(cfg, nproc=max(gpus, 1))
    model.metadata.update({**ref.lineage(), "checkpoint": result["checkpoint"], "arch": cfg.model.arch})
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
def pretrain_on_cluster(run_id: str, model: Output[Model], config: str = "", config_yaml: str = "",
                        overrides: List[str] = [],  # noqa: B006 - KFP reads the default from the signature
                        overlay: str = "prod-gpu", template_yaml: str = "", nodes: int = 2, nproc_per_node: int = 8,
                        gpus: bool = True, data_root: str = "", data_claim: str = "", data_subpath: str = "",
                        namespace: str = "", image: str = "", pushgateway: str = "",
                        timeout_hours: float = 168.0) -> None:
    """Train on `nodes` nodes x `nproc_per_node` processes as the PyTorchJob `dino-pretrain-<run_id>` and wait.

    The job is k8s/jobs/pretrain as `overlay` renders it (or `template_yaml`, already rendered); its
    config is the packaged `config` or `config_yaml` when given, else the overlay's, with `overrides`.
    `data_root` (under /data), the claims and `image` default to the config's and template's. A retried
    step adopts the job of the same run id. `model` holds no weights: its metadata points at the
    checkpoint on the runs claim (`/runs/<job>/checkpoint.pth`), which later steps mount to read it.
    """
    import json
    from pathlib import Path

    from dino_model.config import pipeline_config
    from dino_model.train import cluster

    options = cluster.JobOptions(
        name=cluster.job_name(run_id), nodes=nodes, nproc_per_node=nproc_per_node, gpus=gpus, image=image or None,
        namespace=namespace or None, data_claim=data_claim or None, data_subpath=data_subpath or None,
        env=cluster.env_pairs({"DINO_RUN_ID": run_id, "DINO_PUSHGATEWAY": pushgateway}),
    )
    cluster.validate_options(options)
    resources = cluster.parse_rendered(template_yaml) if template_yaml.strip() else cluster.render_overlay(overlay)
    cfg = pipeline_config(config, config_yaml, overrides) if (config or config_yaml.strip()) else None
    result = cluster.launch(resources, options, cfg, overrides=overrides, data_root=data_root or None,
                            timeout_s=timeout_hours * 3600)
    model.metadata.update({"checkpoint": result["checkpoint"], "runs_claim": result["runs_claim"],
                           "claim_path": result["claim_path"], "job": result["job"], "namespace": result["namespace"],
                           "nodes": result["nodes"], "nproc_per_node": result["nproc_per_node"],
                           "data_version": result["data_version"], "arch": result["arch"]})
    Path(model.path).mkdir(parents=True, exist_ok=True)
    (Path(model.path) / "cluster_run.json").write_text(json.dumps(result, indent=2))
