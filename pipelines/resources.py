"""Cluster resources for pipeline tasks: GPUs, tolerations, node selection, shared memory, secrets.

GPU requests are core KFP (`set_accelerator_type/limit`); tolerations, node selectors, volumes and
secrets come from kfp-kubernetes. kfp.local ignores all of these, so tests check the compiled IR.
"""

from kfp import kubernetes
from kfp.dsl import PipelineTask

GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
DVC_SECRET = "dvc-remote-credentials"


def request_gpus(task: PipelineTask, gpus) -> PipelineTask:
    """`gpus` NVIDIA GPUs on a GPU node (tainted pools tolerated), memory-backed /dev/shm for loaders."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request("8").set_memory_request("32Gi").set_memory_limit("64Gi")
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    return task


def request_resources(task: PipelineTask, *, cpu: str, memory: str) -> PipelineTask:
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task


def use_dvc_credentials(task: PipelineTask) -> PipelineTask:
    """S3-compatible remote credentials from a Secret (never from files in the repository)."""
    kubernetes.use_secret_as_env(
        task, secret_name=DVC_SECRET, optional=True,
        secret_key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    )
    return task
