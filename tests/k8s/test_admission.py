"""The admission policy on pretraining jobs (k8s/cluster): whoever may create a PyTorchJob or TrainJob in
the install's namespace gets pods that read no Secret, mount only the training claims, run as `pretrain`
without a token and stay off the node. RBAC alone cannot say this (the launcher's Role lets it create
jobs, and a job's pod template is whatever its creator writes), so each forbidden variant is evaluated
against the policy's own CEL expressions (k8s_cel, cel-python) and must be denied with its message, while
the rendered templates and the job the launcher builds are admitted."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from k8s_cel import denials
from k8s_render import INSTALLS, K8S_DIR, LAUNCHES, find, one, render, selector_matches
from k8s_schema import k8s_versions, schema_errors

CLUSTER = K8S_DIR / "cluster"
POLICY_NAME = "dino-mlops-training-pods"
SECRETS = "may not read Secrets"
VOLUMES = "may mount only configMap, emptyDir and persistentVolumeClaim"
CLAIMS = "may mount only the claims"
IDENTITY = "run as the ServiceAccount pretrain"
NODE = "may not be privileged"
TRAINJOB_FIELDS = "a TrainJob may set only"

Resource = dict[str, Any]


@pytest.fixture(scope="module")
def cluster() -> list[Resource]:
    return render(CLUSTER)


@pytest.fixture(scope="module")
def policy(cluster) -> Resource:
    return one(cluster, "ValidatingAdmissionPolicy", POLICY_NAME)


def _job(rendered, env: str = "prod-gpu") -> Resource:
    (job,) = find(rendered[f"{env}/pretrain"], "PyTorchJob")
    return copy.deepcopy(job)


def _master(job: Resource) -> Resource:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def _train_job(**spec: Any) -> Resource:
    base = {"runtimeRef": {"name": "torch-distributed"},
            "trainer": {"image": "ghcr.io/dino-mlops/dino-mlops:0.1.0", "numNodes": 2,
                        "env": [{"name": "DINO_RUN_ID", "value": "r1"}]}}
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "dino-pretrain-r1"}, "spec": {**base, **spec}}


def test_the_cluster_tree_validates_and_is_cluster_scoped(cluster) -> None:
    assert {r["kind"] for r in cluster} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for resource in cluster:
        assert "namespace" not in resource["metadata"], resource["kind"]
        for version in k8s_versions():
            assert not schema_errors(resource, version=version), (resource["kind"], version)


def test_the_binding_denies_in_every_install_namespace(cluster, policy, rendered) -> None:
    binding = one(cluster, "ValidatingAdmissionPolicyBinding", POLICY_NAME)
    assert binding["spec"]["policyName"] == POLICY_NAME and binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    for env in INSTALLS:
        (namespace,) = find(rendered[env], "Namespace")
        assert selector_matches(selector, namespace["metadata"]["labels"]), env
    assert not selector_matches(selector, {"kubernetes.io/metadata.name": "other-team"})
    rules = {(g, r, op) for rule in policy["spec"]["matchConstraints"]["resourceRules"]
             for g in rule["apiGroups"] for r in rule["resources"] for op in rule["operations"]}
    for group, resource in (("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")):
        assert {(group, resource, "CREATE"), (group, resource, "UPDATE")} <= rules


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_the_rendered_templates_and_the_launchers_job_are_admitted(policy, rendered, env: str) -> None:
    from dino_model.train.cluster import JobOptions, build_job

    job = _job(rendered, env)
    assert denials(policy, job) == []
    built = build_job(job, JobOptions(name="dino-pretrain-r1", nodes=4, nproc_per_node=2, image="reg/x:1",
                                      namespace=find(rendered[env], "Namespace")[0]["metadata"]["name"],
                                      env=(("DINO_RUN_ID", "r1"),)))
    assert denials(policy, built) == []
    assert denials(policy, _train_job()) == []
    assert str(LAUNCHES[env]).endswith("pretrain")


def _secret_volume(job: Resource) -> None:
    _master(job)["volumes"].append({"name": "s", "secret": {"secretName": "triton-admin-key"}})


def _projected_secret(job: Resource) -> None:
    sources = [{"secret": {"name": "lineage-signing-key"}}]
    _master(job)["volumes"].append({"name": "p", "projected": {"sources": sources}})


def _host_path(job: Resource) -> None:
    _master(job)["volumes"].append({"name": "h", "hostPath": {"path": "/"}})


def _model_claim(job: Resource) -> None:
    _master(job)["volumes"].append({"name": "m", "persistentVolumeClaim": {"claimName": "triton-models"}})


def _env_secret(job: Resource) -> None:
    _master(job)["containers"][0]["env"].append(
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "triton-admin-key", "key": "admin-key"}}})


def _env_from_secret(job: Resource) -> None:
    _master(job)["containers"][0]["envFrom"] = [{"secretRef": {"name": "dvc-remote-credentials"}}]


def _init_container_secret(job: Resource) -> None:
    _master(job)["initContainers"] = [{"name": "i", "image": "busybox",
                                       "envFrom": [{"secretRef": {"name": "data-repo-credentials"}}]}]


def _other_account(job: Resource) -> None:
    _master(job)["serviceAccountName"] = "default-editor"


def _no_account(job: Resource) -> None:
    del _master(job)["serviceAccountName"]


def _token(job: Resource) -> None:
    _master(job)["automountServiceAccountToken"] = True


def _privileged(job: Resource) -> None:
    _master(job)["containers"][0]["securityContext"]["privileged"] = True


def _escalation(job: Resource) -> None:
    _master(job)["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _capability(job: Resource) -> None:
    _master(job)["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]


def _host_network(job: Resource) -> None:
    _master(job)["hostNetwork"] = True


def _host_pid(job: Resource) -> None:
    _master(job)["hostPID"] = True


def _host_port(job: Resource) -> None:
    _master(job)["containers"][0]["ports"] = [{"containerPort": 23456, "hostPort": 23456}]


def _worker_only(job: Resource) -> None:
    """The Worker's template is checked too, not only the Master's."""
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    worker["volumes"] = [*worker["volumes"], {"name": "s", "secret": {"secretName": "lineage-signing-key"}}]


@pytest.mark.parametrize(("change", "expected"), [
    (_secret_volume, VOLUMES), (_projected_secret, VOLUMES), (_host_path, VOLUMES), (_model_claim, CLAIMS),
    (_env_secret, SECRETS), (_env_from_secret, SECRETS), (_init_container_secret, SECRETS),
    (_other_account, IDENTITY), (_no_account, IDENTITY), (_token, IDENTITY),
    (_privileged, NODE), (_escalation, NODE), (_capability, NODE), (_host_network, NODE), (_host_pid, NODE),
    (_host_port, NODE), (_worker_only, VOLUMES),
], ids=lambda x: getattr(x, "__name__", x).strip("_") if callable(x) else None)
def test_a_pytorchjob_that_leaves_the_allowlist_is_denied(policy, rendered, change: Callable, expected: str) -> None:
    job = _job(rendered)
    change(job)
    denied = denials(policy, job)
    assert denied and all(expected in message for message in denied), denied


@pytest.mark.parametrize(("spec", "expected"), [
    ({"podSpecOverrides": [{"targetJobs": [{"name": "node"}],
                            "volumes": [{"name": "s", "secret": {"secretName": "triton-admin-key"}}]}]},
     VOLUMES),
    ({"podTemplateOverrides": [{"targetJobs": [{"name": "node"}],
                                "spec": {"serviceAccountName": "default-editor"}}]},
     IDENTITY),
    ({"podTemplateOverrides": [{"targetJobs": [{"name": "node"}], "spec": {"containers": [
        {"name": "node", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]}]}}]},
     SECRETS),
    ({"trainer": {"image": "x", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]}},
     SECRETS),
    ({"initializer": {"dataset": {"storageUri": "s3://bucket/data", "secretRef": {"name": "dvc-remote-credentials"}}}},
     TRAINJOB_FIELDS),
    ({"runtimePatches": [{"manager": "x", "trainingRuntimeSpec": {}}]}, TRAINJOB_FIELDS),
], ids=["override-secret-volume", "override-account", "override-secret-env", "trainer-secret-env", "initializer",
        "runtime-patches"])
def test_a_trainjob_that_leaves_the_allowlist_is_denied(policy, spec: Resource, expected: str) -> None:
    denied = denials(policy, _train_job(**spec))
    assert denied and all(expected in message for message in denied), denied


def test_an_override_within_the_allowlist_is_admitted(policy) -> None:
    job = _train_job(podTemplateOverrides=[{"targetJobs": [{"name": "node"}], "spec": {
        "serviceAccountName": "pretrain",
        "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": "dino-runs"}}],
        "containers": [{"name": "node", "volumeMounts": [{"name": "runs", "mountPath": "/runs"}]}]}}])
    assert denials(policy, job) == []


def test_a_job_the_policy_cannot_read_is_denied(policy, rendered) -> None:
    """failurePolicy Fail: an expression that cannot be evaluated denies, as on the API server."""
    job = _job(rendered)
    del job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    denied = denials(policy, job)
    assert denied and all("evaluation error" in message for message in denied), denied
