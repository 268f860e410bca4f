"""Where a training pod may be scheduled, from the number of GPUs it asks for.

A pipeline parameter is known only at run time, so the node selector and tolerations are computed by
a step and handed to the pretraining task (kfp-kubernetes `*_json` settings): a CPU run (gpus = 0)
must not wait for a GPU node.
"""

from __future__ import annotations

GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")  # set by NVIDIA's GPU feature discovery


def gpu_node_selector(gpus: int) -> dict[str, str]:
    return dict([GPU_NODE_LABEL]) if gpus > 0 else {}


def gpu_tolerations(gpus: int) -> list[dict[str, str]]:
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if gpus > 0 else []
