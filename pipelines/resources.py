"""Cluster resources for pipeline tasks: GPUs, tolerations, node selection, shared memory, secrets, disk.

GPU requests are core KFP (`set_accelerator_type/limit`); tolerations, node selectors, volumes and
secrets come from kfp-kubernetes. kfp.local ignores all of these, so tests check the compiled IR.

Disk: KFP's IR (2.17) has no ephemeral-storage request. Every step gets a size-limited emptyDir at
/scratch (its temporary files; the kubelet evicts a pod past the limit); a step that reads the data
gets a generic ephemeral volume at /data-scratch instead, a claim of `DATA_SCRATCH_SIZE` that the
scheduler provisions before the pod starts, where the step materialises the data version
(dino_model/versioning/mirror.py). With DINO_DATA_CACHE_CLAIM set when compiling, those steps also
mount that ReadWriteMany claim at /data-cache, filled once per data md5 and shared by every step and run.
"""

import os

from kfp import kubernetes
from kfp.dsl import PipelineTask

from dino_model.train.placement import GPU_RESOURCE

DVC_SECRET = "dvc-remote-credentials"
DATA_REPO_SECRET = "data-repo-credentials"


def request_gpus(task: PipelineTask, gpus, placement: PipelineTask) -> PipelineTask:
    """`gpus` NVIDIA GPUs, on a GPU node only when gpus > 0 (`placement` computes the selector at run time),
    and a memory-backed /dev/shm for loaders."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request("8").set_memory_request("32Gi").set_memory_limit("64Gi")
    kubernetes.add_node_selector_json(task, placement.outputs["node_selector"])
    kubernetes.add_toleration_json(task, placement.outputs["tolerations"])
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH_MOUNT, size_limit="20Gi")
    return task


RUNS_CLAIM, RUNS_MOUNT = "dino-runs", "/runs"


def use_runs_claim(task: PipelineTask) -> PipelineTask:
    """Mount the runs claim where the cluster's training pods write /runs/<job>, to copy a checkpoint back."""
    kubernetes.mount_pvc(task, pvc_name=RUNS_CLAIM, mount_path=RUNS_MOUNT)
    return task


def request_resources(task: PipelineTask, *, cpu: str, memory: str, scratch: str = "2Gi") -> PipelineTask:
    """CPU and memory requests (memory limited too) and a `scratch`-sized emptyDir at /scratch."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH_MOUNT, size_limit=scratch)
    return task


SCRATCH_MOUNT = "/scratch"
DATA_SCRATCH_MOUNT = "/data-scratch"  # dino_model.versioning.mirror.SCRATCH_DIR
DATA_CACHE_MOUNT = "/data-cache"  # dino_model.versioning.mirror.SHARED_CACHE_DIR
DATA_SCRATCH_SIZE = os.environ.get("DINO_DATA_SCRATCH_SIZE", "200Gi")  # an ImageNet-1k train/ is about 140 GB
DATA_CACHE_CLAIM = os.environ.get("DINO_DATA_CACHE_CLAIM", "")


def read_data(task: PipelineTask) -> PipelineTask:
    """What a step that materialises the data version needs: the remote's credentials, a sized volume
    to put the data on, and the shared cache claim when one was named at compile time."""
    use_dvc_credentials(task)
    kubernetes.add_ephemeral_volume(task, volume_name="data-scratch", mount_path=DATA_SCRATCH_MOUNT,
                                    access_modes=["ReadWriteOnce"], size=DATA_SCRATCH_SIZE)
    if DATA_CACHE_CLAIM:
        kubernetes.mount_pvc(task, pvc_name=DATA_CACHE_CLAIM, mount_path=DATA_CACHE_MOUNT)
    return task


def retry_transient(task: PipelineTask, *, retries: int = 3, backoff: str = "30s") -> PipelineTask:
    """Retry a step whose failures are usually passing (a git server, an object store, Triton, the
    Pushgateway): `retries` times, waiting `backoff`, then twice as long each time, for at most an hour."""
    return task.set_retry(num_retries=retries, backoff_duration=backoff, backoff_factor=2.0,
                          backoff_max_duration="3600s")


def use_dvc_credentials(task: PipelineTask) -> PipelineTask:
    """S3-compatible remote credentials from a Secret (never from files in the repository)."""
    kubernetes.use_secret_as_env(
        task, secret_name=DVC_SECRET, optional=True,
        secret_key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    )
    return task


def use_data_repo_credentials(task: PipelineTask) -> PipelineTask:
    """HTTPS credentials of the data repository from a Secret, read by git's credential helper at clone time."""
    kubernetes.use_secret_as_env(
        task, secret_name=DATA_REPO_SECRET, optional=True,
        secret_key_to_env={"username": "DINO_GIT_USERNAME", "token": "DINO_GIT_TOKEN"},
    )
    return task


TRITON_MODELS_CLAIM = "triton-models"
TRITON_ADMIN_SECRET = "triton-admin-key"
# the pod label Triton's NetworkPolicy admits to its gRPC/HTTP ports (k8s/base/network/triton.yaml)
TRITON_CLIENT_LABEL = ("dino-mlops/triton-client", "true")


def call_triton(task: PipelineTask) -> PipelineTask:
    """Let the task's pod connect to Triton: it carries the label Triton's NetworkPolicy admits. Every step
    given `triton_url` needs it (the quality gate reads the served model's lineage, the deploy step loads)."""
    key, value = TRITON_CLIENT_LABEL
    kubernetes.add_pod_label(task, label_key=key, label_value=value)
    return task


def use_triton_repository(task: PipelineTask) -> PipelineTask:
    """The claim Triton serves from, read-write at /models, and the admin key of its repository API: only
    the deploy step and the quality gate get them (the gate to finish a deploy that was killed before it
    reads the served score; both run the project's own code). They run in the namespace of the claim
    (docs/operations.md) and carry the label Triton's NetworkPolicy admits (call_triton)."""
    kubernetes.mount_pvc(task, pvc_name=TRITON_MODELS_CLAIM, mount_path="/models")
    kubernetes.use_secret_as_env(task, secret_name=TRITON_ADMIN_SECRET,
                                 secret_key_to_env={"admin-key": "TRITON_ADMIN_KEY"})
    return call_triton(task)


def read_triton_repository(task: PipelineTask) -> PipelineTask:
    """The claim Triton serves from, at /models, without the admin key or Triton's network label: for the
    pretraining that starts from the served version's weights, which only reads the file it was given and
    checks its sha256 (kfp-kubernetes mounts a claim read-write; nothing here writes to it)."""
    return kubernetes.mount_pvc(task, pvc_name=TRITON_MODELS_CLAIM, mount_path="/models")


LINEAGE_SIGNING_SECRET = "lineage-signing-key"


def use_lineage_signing_key(task: PipelineTask) -> PipelineTask:
    """The export's private key that signs the lineage (key `private-key` -> $DINO_LINEAGE_SIGNING_KEY): only
    the export step gets it. Required: an export signing with a key generated in its own pod would
    produce lineage nothing trusts (dino_model/export/signing.py)."""
    kubernetes.use_secret_as_env(task, secret_name=LINEAGE_SIGNING_SECRET,
                                 secret_key_to_env={"private-key": "DINO_LINEAGE_SIGNING_KEY"})
    return task


def use_lineage_public_keys(task: PipelineTask) -> PipelineTask:
    """The public key(s) that verify signed lineage (key `public-keys` -> $DINO_LINEAGE_PUBLIC_KEYS), for the
    deploy step and the quality gate; several PEM blocks while a key is rotated."""
    kubernetes.use_secret_as_env(task, secret_name=LINEAGE_SIGNING_SECRET,
                                 secret_key_to_env={"public-keys": "DINO_LINEAGE_PUBLIC_KEYS"})
    return task
