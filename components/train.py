"""Pretraining component: DINO on 1..N GPUs of one node (torchrun), as dino_model trains it."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(data: Input[Dataset], data_md5: str, config_yaml: str, overrides: List[str], train_subdir: str,
             gpus: int, model: Output[Model], metrics: Output[Metrics]) -> None:
    """Train on `data`/`train_subdir`; `overrides` are TrainConfig keys (e.g. train.epochs=5).

    `gpus` processes run under torchrun (one per GPU; 0 or 1 trains in this process).
    """
    from dino_model.config import load_config_text
    from dino_model.train.worker import launch_training

    cfg = load_config_text(config_yaml, [*overrides, f"data.root={data.path}/{train_subdir}",
                                         f"train.output_dir={model.path}", f"data.version={data_md5}"])
    result = launch_training(cfg, nproc=max(gpus, 1))
    model.metadata.update({"data_version": data_md5, "checkpoint": result["checkpoint"], "arch": cfg.model.arch})
    for name, value in result["final_metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, value)
