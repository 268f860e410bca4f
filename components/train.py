"""Pretraining components: DINO on 1..N GPUs of one node (torchrun), as dino_model trains it, or on several
nodes as a Kubeflow Trainer v2 TrainJob or Training Operator v1 PyTorchJob launched from this step, whose
checkpoint comes back as the same model folder (checkpoint.pth, config.yaml, metrics.jsonl)."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(data_ref: str, config: str, config_yaml: str, overrides: List[str], train_subdir: str, gpus: int,
             pushgateway: str, model: Output[Model], metrics: Output[Metrics], captured_subdir: str = "",
             init_weights: str = "", init_sha256: str = "") -> None:
    """Train on `train_subdir` of the data version `data_ref` (the data step's reference), plus its
    `captured_subdir` when the version holds one, with the packaged `config` (or `config_yaml`) and `overrides`.

    The images come from the DVC remote: streamed when `train_subdir` holds tar shards (each process
    reads its own), else materialised once into the data cache; captured images are materialised
    beside them (data.extra_roots, which shards do not combine with). Given `init_weights` (the served
    version's weights on the triton-models claim, resolve_served_weights) the run starts from them once
    their sha256 is `init_sha256`. `gpus` processes run under torchrun (0 or 1 trains in this process).
    Epoch metrics go live to the Pushgateway `pushgateway` labelled with this training's own id (a cached
    step takes no run id); the run's push step relabels the result.
    """
    import os

    from dino_model.config import pipeline_config
    from dino_model.runtime.digests import work_id
    from dino_model.serving.served_weights import verified_weights
    from dino_model.train.worker import launch_training
    from dino_model.versioning.mirror import extra_training_roots, training_root
    from dino_model.versioning.reference import DataReference

    ref = DataReference.from_json(data_ref)
    label = work_id("pretrain", data_ref, config, config_yaml, *overrides, captured_subdir, init_sha256)
    os.environ.update({"DINO_PUSHGATEWAY": pushgateway, "DINO_RUN_ID": label})  # torchrun workers inherit
    extra = extra_training_roots(data_ref, captured_subdir) if captured_subdir else []
    init = {"init_weights": str(verified_weights(init_weights, init_sha256)), "init_sha256": init_sha256} \
        if init_weights else {}
    step = [f"data.root={training_root(data_ref, train_subdir)}", f"data.extra_roots={extra!r}",
            f"train.output_dir={model.path}", f"data.version={ref.md5}", f"data.revision={ref.git_rev}",
            *([f"train.init_weights={init['init_weights']}"] if init else [])]
    cfg = pipeline_config(config, config_yaml, [*overrides, *step])
    result = launch_training(cfg, nproc=max(gpus, 1))
    model.metadata.update({**ref.lineage(), **init, "checkpoint": result["checkpoint"], "arch": cfg.model.arch,
                           "extra_roots": ",".join(extra)})
    for name, value in result["final_metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, value)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_served_weights(enabled: bool, triton_url: str, model_name: str, triton_repository: str
                           ) -> NamedTuple("ServedWeights", [("path", str), ("sha256", str)]):
    """When `enabled`, the weights file of the version Triton serves (on the triton-models claim) and its sha256;
    ("", "") when not enabled or nothing is served (pretraining then starts from scratch, as the log says).

    Never cached: the served model changes between runs, and its sha256 enters pretraining's cache key.
    """
    import logging
    from collections import namedtuple

    from dino_model.serving.client import replica_urls
    from dino_model.serving.served_weights import resolve_served_weights as resolve

    weights = resolve(triton_url, model_name, triton_repository, replicas=replica_urls(triton_url)) \
        if enabled else None
    if not enabled:
        logging.getLogger("served_weights").info("init_from_serving is off: pretraining starts from scratch")
    return namedtuple("ServedWeights", ["path", "sha256"])(weights.path if weights else "",
                                                           weights.sha256 if weights else "")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gpu_placement(gpus: int) -> NamedTuple("Placement", [("node_selector", dict), ("tolerations", list)]):
    """Where pretraining may run: a GPU node (tainted GPU pools tolerated) when `gpus` > 0, else anywhere."""
    from collections import namedtuple

    from dino_model.train.placement import gpu_node_selector, gpu_tolerations

    return namedtuple("Placement", ["node_selector", "tolerations"])(gpu_node_selector(gpus), gpu_tolerations(gpus))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain_on_cluster(model: Output[Model], metrics: Output[Metrics], run_id: str = "",
                        operator: str = "trainer-v2", config: str = "", config_yaml: str = "",
                        overrides: List[str] = [],  # noqa: B006 - KFP reads the default from the signature
                        data_md5: str = "", data_rev: str = "", overlay: str = "prod-gpu", template_yaml: str = "",
                        runtime_yaml: str = "", nodes: int = 2, nproc_per_node: int = 8, gpus: bool = True,
                        data_root: str = "", data_claim: str = "", data_subpath: str = "", namespace: str = "",
                        image: str = "", pushgateway: str = "", timeout_hours: float = 168.0,
                        runs_mount: str = "/runs") -> None:
    """Train on `nodes` nodes as the job `dino-pretrain-<run_id>`, wait, and copy its checkpoint into `model`.

    Without a `run_id` the job is named after what defines the training (data md5, config, overrides,
    operator, nodes), as the one-node step labels its metrics: the step then caches, and a retried or
    repeated step adopts the job of the same training instead of training again.

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
    from dino_model.runtime.digests import work_id
    from dino_model.train import cluster

    run_id = run_id or work_id("pretrain", data_md5, config, config_yaml, *overrides, operator, str(nodes),
                               str(nproc_per_node))
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
