"""Pretraining component: DINO on 1..N GPUs of one node (torchrun), as dino_model trains it."""

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
