"""The NetworkPolicies, checked by network-config-analyzer in every supported install topology.

Both topologies of docs/operations.md are modelled, for dev and prod-gpu:
- multi-user: the install namespace is the KFP profile namespace where the pipeline's pods run
  (with KFP's ml-pipeline-ui-artifact server), KFP's control plane in `kubeflow`;
- standalone: the overlay is installed into `kubeflow` (an operator's overlay that sets
  `namespace: kubeflow`), beside KFP's control plane and the pipeline's pods.
Around them: CoreDNS, Prometheus and the Pushgateway in `monitoring`, a pod of another team's
namespace, user pods in the install namespace, and the git host and DVC remote outside the cluster.
The step pods carry the labels the compiled pipeline gives them (kfp-kubernetes pod labels).

nca computes the connectivity map once per overlay and topology; each check below reads it, and the
verdicts are printed per overlay and topology so that CI logs show what the analyzer concluded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from k8s_nca import (
    Connectivity,
    Pod,
    analyze,
    connections_allow,
    namespace_manifest,
    pods_of,
    render_in_namespace,
    sanity,
)
from k8s_render import INSTALLS, LAUNCHES, all_pod_templates, find, render, selector_matches

INSTALL_NAMESPACE = {"dev": "dino-mlops-dev", "prod-gpu": "dino-mlops"}
TOPOLOGIES = ("multi-user", "standalone")
KFP = "kubeflow"
TRITON_CLIENT = {"dino-mlops/triton-client": "true"}
V2_COMPONENT = {"pipelines.kubeflow.org/v2_component": "true"}  # what KFP's Argo workflows put on every pod
GIT_HOST, DVC_REMOTE = "140.82.112.3", "52.216.8.10"  # outside the cluster (a git host, an S3 endpoint)


@dataclass(frozen=True)
class Check:
    src: str
    dst: str  # a role of the world, or an IP address outside the cluster
    port: int
    allow: bool
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class World:
    """One overlay installed in one topology, with nca's connectivity map over it."""

    env: str
    topology: str
    namespace: str
    pods: dict[str, Pod]  # role -> modelled pod
    connectivity: Connectivity
    sanity: list[str]  # nca's sanity findings about the policies

    def endpoint(self, role: str) -> str:
        return self.pods[role].endpoint if role in self.pods else role

    def allows(self, check: Check) -> bool:
        return self.connectivity.allows(self.pods[check.src].endpoint, self.endpoint(check.dst), check.port,
                                        check.protocol)


def _cases() -> Iterator[tuple[str, str]]:
    for env in sorted(INSTALLS):
        for topology in TOPOLOGIES:
            yield env, topology


def _compiled_pipeline(workdir: Path) -> list[dict]:
    from kfp import compiler

    from pipelines.training import dino_training_pipeline

    compiler.Compiler().compile(dino_training_pipeline, str(workdir / "pipeline.yaml"))
    return list(yaml.safe_load_all((workdir / "pipeline.yaml").read_text()))


def _step_labels(compiled: list[dict], component: str) -> dict[str, str]:
    """The labels KFP puts on the pod of `component` (e.g. 'deploy-to-triton'): its own and kfp-kubernetes'."""
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    extra = executors.get(f"exec-{component}", {}).get("podMetadata", {}).get("labels", {})
    return {**V2_COMPONENT, **extra}


def _kfp_control_plane() -> dict[str, Pod]:
    """KFP's own pods in `kubeflow`, with the labels of its manifests (kubeflow/pipelines, manifests/kustomize)."""
    pods = {
        "ml-pipeline": {"app": "ml-pipeline", "application-crd-id": "kubeflow-pipelines"},  # 8888 HTTP, 8887 gRPC
        "ml-pipeline-ui": {"app": "ml-pipeline-ui"},
        "metadata-grpc": {"component": "metadata-grpc-server"},  # metadata-grpc-service, 8080
        "metadata-envoy": {"component": "metadata-envoy"},
        "minio": {"app": "minio"},  # the artifact store, 9000
        "mysql": {"app": "mysql"},
        "workflow-controller": {"app": "workflow-controller"},
        "persistence-agent": {"app": "ml-pipeline-persistenceagent"},
        "scheduled-workflow": {"app": "ml-pipeline-scheduledworkflow"},
        "cache-server": {"app": "cache-server"},
    }
    return {role: Pod(KFP, role, labels) for role, labels in pods.items()}


def _world_pods(compiled: list[dict], namespace: str, topology: str, project: dict[str, Pod]) -> dict[str, Pod]:
    pods = {
        **project,
        **_kfp_control_plane(),
        # the pipeline's pods run in the install namespace (the claim and Secrets are there)
        "kfp-driver": Pod(namespace, "kfp-driver", {**V2_COMPONENT, "workflows.argoproj.io/workflow": "dino-1"}),
        "kfp-step": Pod(namespace, "kfp-step", _step_labels(compiled, "pretrain")),
        "kfp-gate": Pod(namespace, "kfp-gate", _step_labels(compiled, "quality-gate")),
        "kfp-deploy": Pod(namespace, "kfp-deploy", _step_labels(compiled, "deploy-to-triton")),
        "dns": Pod("kube-system", "coredns", {"k8s-app": "kube-dns"}),
        "kube-proxy": Pod("kube-system", "kube-proxy", {"k8s-app": "kube-proxy"}),
        "prometheus": Pod("monitoring", "prometheus", {"app.kubernetes.io/name": "prometheus"}),
        "pushgateway": Pod("monitoring", "pushgateway", {"app.kubernetes.io/name": "prometheus-pushgateway"}),
        "other-team": Pod("team-b", "notebook", {"app": "notebook", **TRITON_CLIENT}),
        "unlabelled": Pod(namespace, "unlabelled", {"app": "something-else"}),
        "client": Pod(namespace, "inference-client", {"app": "batch-embed", **TRITON_CLIENT}),
    }
    if topology == "multi-user":  # KFP's profile controller runs this in every profile namespace
        pods["ui-artifact"] = Pod(namespace, "ml-pipeline-ui-artifact", {"app": "ml-pipeline-ui-artifact"})
    return pods


def _project_pods(installed: list[dict], launched: list[dict], namespace: str) -> dict[str, Pod]:
    by_name = pods_of(installed + launched, namespace)
    return {"triton": by_name["triton"], "retrain": by_name["retrain-check"],
            "pretrain-master": by_name["dino-pretrain-master"], "pretrain-worker": by_name["dino-pretrain-worker"]}


def _rendered_for(env: str, topology: str, rendered, workdir: Path) -> tuple[str, list[dict], list[dict]]:
    """(install namespace, installed resources, launched pretraining resources) of `env` in `topology`."""
    if topology == "standalone":
        installed = render_in_namespace(INSTALLS[env], KFP, workdir / "install")
        return KFP, installed, render_in_namespace(LAUNCHES[env], KFP, workdir / "launch", install=False)
    return INSTALL_NAMESPACE[env], rendered[env], rendered[f"{env}/pretrain"]


def _world_of(namespace: str, topology: str, installed: list[dict], launched: list[dict],
              compiled: list[dict]) -> tuple[dict[str, Pod], list[dict], list[dict]]:
    """(pods by role, the namespaces and pods as manifests, the NetworkPolicies) of one install."""
    pods = _world_pods(compiled, namespace, topology, _project_pods(installed, launched, namespace))
    profile = {"app.kubernetes.io/part-of": "kubeflow-profile"} if topology == "multi-user" else {}
    namespaces = {KFP: {}, "kube-system": {}, "monitoring": {}, "team-b": {}, namespace: profile}
    world = [namespace_manifest(name, labels) for name, labels in namespaces.items()]
    world += [pod.manifest() for pod in pods.values()]
    return pods, world, find(installed, "NetworkPolicy") + find(launched, "NetworkPolicy")


def _build_world(env: str, topology: str, rendered, compiled: list[dict], workdir: Path) -> World:
    namespace, installed, launched = _rendered_for(env, topology, rendered, workdir)
    pods, world, policies = _world_of(namespace, topology, installed, launched, compiled)
    return World(env, topology, namespace, pods, analyze(policies, world, workdir / "nca"),
                 sanity(policies, world, workdir / "sanity"))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    return _compiled_pipeline(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def worlds(rendered, compiled, tmp_path_factory) -> dict[tuple[str, str], World]:
    return {(env, topology): _build_world(env, topology, rendered, compiled, tmp_path_factory.mktemp(env + topology))
            for env, topology in _cases()}


def _verdicts(world: World, checks: list[Check]) -> tuple[list[str], list[Check]]:
    """Lines 'ok|WRONG allow|deny check' per check, and the checks where nca disagrees with the expectation."""
    lines, wrong = [], []
    for check in checks:
        verdict = world.allows(check)
        lines.append(f"  {'ok   ' if verdict == check.allow else 'WRONG'} {'allow' if verdict else 'deny '} {check}")
        if verdict != check.allow:
            wrong.append(check)
    return lines, wrong


def _assert_checks(world: World, title: str, checks: list[Check], capsys) -> None:
    lines, wrong = _verdicts(world, checks)
    with capsys.disabled():  # the analyzer's verdicts belong in the CI log
        print(f"\nnca verdicts, {world.env} installed {world.topology} (namespace {world.namespace}): {title}")
        print("\n".join(lines))
    assert not wrong, (
        f"{world.env}/{world.topology}: nca disagrees on "
        + "; ".join(f"{c} should be {'allowed' if c.allow else 'denied'}" for c in wrong)
    )


CASES = pytest.mark.parametrize(("env", "topology"), list(_cases()))


@CASES
def test_pipeline_pods_reach_kfp_storage_and_the_outside(worlds, env: str, topology: str, capsys) -> None:
    """KFP's driver, launcher and step pods in the install namespace reach KFP's API, the metadata service,
    the artifact store, DNS, the Pushgateway, and git / the DVC remote on 443."""
    checks = [
        Check(pod, dst, port, True, protocol)
        for pod in ("kfp-driver", "kfp-step", "kfp-gate", "kfp-deploy")
        for dst, port, protocol in (("ml-pipeline", 8887, "TCP"), ("ml-pipeline", 8888, "TCP"),
                                    ("metadata-grpc", 8080, "TCP"), ("minio", 9000, "TCP"), ("dns", 53, "UDP"),
                                    ("dns", 53, "TCP"), ("pushgateway", 9091, "TCP"), (GIT_HOST, 443, "TCP"),
                                    (DVC_REMOTE, 443, "TCP"))
    ]
    _assert_checks(worlds[env, topology], "pipeline pods", checks, capsys)


@CASES
def test_kfp_keeps_its_own_connectivity(worlds, env: str, topology: str, capsys) -> None:
    """The policies select only the project's pods: KFP's control plane talks to itself and to the
    pipeline's namespace as without them (standalone: it shares the namespace with the install)."""
    checks = [
        Check("ml-pipeline-ui", "ml-pipeline", 8888, True),
        Check("ml-pipeline", "metadata-grpc", 8080, True),
        Check("ml-pipeline", "mysql", 3306, True),
        Check("ml-pipeline", "minio", 9000, True),
        Check("metadata-envoy", "metadata-grpc", 8080, True),
        Check("persistence-agent", "ml-pipeline", 8887, True),
        Check("scheduled-workflow", "ml-pipeline", 8887, True),
        Check("cache-server", "mysql", 3306, True),
        Check("ml-pipeline-ui", "minio", 9000, True),
        Check("ml-pipeline", "dns", 53, True, "UDP"),
    ]
    if topology == "multi-user":
        checks.append(Check("ml-pipeline-ui", "ui-artifact", 3000, True))
    _assert_checks(worlds[env, topology], "KFP control plane", checks, capsys)


@CASES
def test_only_admitted_pods_reach_triton(worlds, env: str, topology: str, capsys) -> None:
    """Inference and the repository API (8000/8001): the deploy step, the quality gate, the retraining check
    and pods labelled dino-mlops/triton-client in the namespace; nobody else, KFP's control plane included.
    Metrics (8002): Prometheus only."""
    admitted = ("kfp-deploy", "kfp-gate", "retrain", "client")
    refused = ("kfp-step", "kfp-driver", "unlabelled", "other-team", "ml-pipeline", "ml-pipeline-ui",
               "workflow-controller", "prometheus")
    checks = [Check(src, "triton", port, True) for src in admitted for port in (8000, 8001)]
    checks += [Check(src, "triton", port, False) for src in refused for port in (8000, 8001)]
    checks += [Check("prometheus", "triton", 8002, True), Check("kfp-deploy", "triton", 8002, False),
               Check("unlabelled", "triton", 8002, False), Check("retrain", "triton", 8002, False)]
    _assert_checks(worlds[env, topology], "Triton", checks, capsys)


@CASES
def test_project_workloads_reach_what_they_need_and_no_more(worlds, env: str, topology: str, capsys) -> None:
    checks = [
        # retraining check: KFP API, Pushgateway, the git host (GitHub's git ranges by default), DNS; nothing
        # else: not the DVC remote (it reads data.dvc from git), not any other address on 443
        Check("retrain", "ml-pipeline", 8888, True),
        Check("retrain", "pushgateway", 9091, True),
        Check("retrain", GIT_HOST, 443, True),
        Check("retrain", "192.30.255.113", 443, True),
        Check("retrain", DVC_REMOTE, 443, False),
        Check("retrain", "8.8.8.8", 443, False),
        Check("retrain", "140.82.128.1", 443, False),
        Check("retrain", "dns", 53, True, "UDP"),
        Check("retrain", "dns", 123, False, "UDP"),
        Check("retrain", "8.8.8.8", 53, False, "UDP"),  # names only through the cluster DNS
        Check("retrain", GIT_HOST, 80, False),
        Check("retrain", "prometheus", 9091, False),
        Check("retrain", "minio", 9000, False),
        Check("retrain", "ml-pipeline-ui", 3000, False),
        Check("kfp-step", "retrain", 8080, False),
        # Triton opens no connection but to DNS
        Check("triton", GIT_HOST, 443, False),
        Check("triton", "ml-pipeline", 8888, False),
        Check("triton", "minio", 9000, False),
        Check("triton", "dns", 53, True, "UDP"),
        Check("triton", "dns", 53, True, "TCP"),
        # pretraining nodes: any port among one job's pods (rendezvous 23456, NCCL's run-time ports), Pushgateway
        Check("pretrain-master", "pretrain-worker", 23456, True),
        Check("pretrain-worker", "pretrain-master", 23456, True),
        Check("pretrain-worker", "pretrain-master", 41234, True),
        Check("pretrain-master", "pushgateway", 9091, True),
        Check("pretrain-master", "dns", 53, True, "UDP"),
        Check("pretrain-master", GIT_HOST, 443, False),
        Check("pretrain-master", "prometheus", 9090, False),
        Check("unlabelled", "pretrain-master", 23456, False),
        Check("kfp-step", "pretrain-master", 23456, False),
        Check("other-team", "pretrain-master", 23456, False),
    ]
    _assert_checks(worlds[env, topology], "dino-mlops workloads", checks, capsys)


@CASES
def test_the_model_covers_every_pod(worlds, env: str, topology: str) -> None:
    """Every modelled pod appears in nca's map (a pod nca dropped would make every check on it vacuous)."""
    world = worlds[env, topology]
    missing = {role for role, pod in world.pods.items() if pod.endpoint not in world.connectivity.endpoints()}
    assert not missing, f"nca's map has no {sorted(missing)}:\n{world.connectivity.report}"


def test_every_pipeline_step_that_calls_triton_is_labelled(compiled) -> None:
    """A step that is given Triton's address must carry the label Triton's policy admits, or it is refused."""
    components = compiled[0]["components"]
    callers = [name.removeprefix("comp-") for name, spec in components.items()
               if "triton_url" in spec.get("inputDefinitions", {}).get("parameters", {})]
    assert {"quality-gate", "deploy-to-triton"} <= set(callers)
    unlabelled = [c for c in callers if not selector_matches(TRITON_CLIENT, _step_labels(compiled, c))]
    assert not unlabelled, f"steps calling Triton without the label {TRITON_CLIENT}: {unlabelled}"


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_every_policy_selects_only_project_pods(rendered, env: str) -> None:
    """The deny-all and every allow policy select the project's pods (and some of them), never KFP's or users'."""
    project = [t["metadata"]["labels"] for _, t in
               all_pod_templates(rendered[env]) + all_pod_templates(rendered[f"{env}/pretrain"])]
    foreign = [{**V2_COMPONENT, **TRITON_CLIENT}, {"app": "ml-pipeline"}, {"app": "something-else"}]
    policies = find(rendered[env], "NetworkPolicy")
    deny = [p for p in policies if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny policy"
    assert all(selector_matches(deny[0]["spec"]["podSelector"], labels) for labels in project)
    for policy in policies:
        selector = policy["spec"]["podSelector"]
        name = policy["metadata"]["name"]
        assert selector, f"{name} selects every pod of the namespace (KFP's too, when they share it)"
        assert any(selector_matches(selector, labels) for labels in project), f"{name} selects no workload"
        assert not any(selector_matches(selector, labels) for labels in foreign), f"{name} selects foreign pods"


@CASES
def test_nca_finds_nothing_to_warn_about(worlds, env: str, topology: str) -> None:
    """nca's sanity query: no redundant policy or rule, no selector that selects nothing (a mistyped label)."""
    findings = worlds[env, topology].sanity
    assert not findings, f"{env}/{topology}: nca --sanity:\n" + "\n".join(findings)


def test_an_overlay_sets_the_retraining_checks_https_endpoints(rendered, compiled, tmp_path, capsys) -> None:
    """The documented patch of retrain-https (docs/operations.md) replaces the default (GitHub's ranges) with
    the overlay's git host and DVC remote, and only those."""
    overlay = tmp_path / "narrowed"
    overlay.mkdir()
    patch = [{"op": "replace", "path": "/spec/egress/0/to",
              "value": [{"ipBlock": {"cidr": "203.0.113.0/24"}}, {"ipBlock": {"cidr": f"{DVC_REMOTE}/32"}}]}]
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [os.path.relpath(INSTALLS["prod-gpu"], overlay)],
                     "patches": [{"target": {"kind": "NetworkPolicy", "name": "retrain-https"},
                                  "patch": yaml.safe_dump(patch)}]}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    namespace = INSTALL_NAMESPACE["prod-gpu"]
    pods, world, policies = _world_of(namespace, "multi-user", render(overlay), rendered["prod-gpu/pretrain"], compiled)
    narrowed = World("prod-gpu + narrowed retrain-https", "multi-user", namespace, pods,
                     analyze(policies, world, tmp_path / "nca"), [])
    checks = [Check("retrain", "203.0.113.9", 443, True), Check("retrain", DVC_REMOTE, 443, True),
              Check("retrain", GIT_HOST, 443, False), Check("retrain", "52.216.8.11", 443, False),
              Check("retrain", "8.8.8.8", 443, False), Check("retrain", "203.0.113.9", 22, False),
              Check("retrain", "ml-pipeline", 8888, True),
              Check("kfp-step", "8.8.8.8", 443, True)]  # the pipeline's own pods are not narrowed
    _assert_checks(narrowed, "HTTPS set to 203.0.113.0/24 and the DVC remote", checks, capsys)


@pytest.mark.parametrize(("text", "port", "protocol", "allowed"), [
    ("All connections", 1, "UDP", True),
    ("No connections", 443, "TCP", False),
    ("{protocols:TCP,dst_ports:443}", 443, "TCP", True),
    ("{protocols:TCP,dst_ports:443}", 443, "UDP", False),
    ("{protocols:TCP,dst_ports:443}", 80, "TCP", False),
    ("{protocols:TCP, UDP,dst_ports:53}", 53, "UDP", True),
    ("{protocols:TCP,dst_ports:8000-8001}", 8001, "TCP", True),
    ("{protocols:TCP,dst_ports:8000-8001}", 8002, "TCP", False),
    ("{protocols:TCP,dst_ports:53,8000-8001},{protocols:UDP,dst_ports:53}", 8000, "TCP", True),
    ("{protocols:TCP,dst_ports:53,8000-8001},{protocols:UDP,dst_ports:53}", 8000, "UDP", False),
    ("{protocols:TCP}", 12345, "TCP", True),
    ("All but {protocols:TCP,dst_ports:22}", 22, "TCP", False),
    ("All but {protocols:TCP,dst_ports:22}", 23, "TCP", True),
])
def test_reading_ncas_connection_text(text: str, port: int, protocol: str, allowed: bool) -> None:
    assert connections_allow(text, port, protocol) is allowed


def test_connection_text_this_reader_does_not_know_is_an_error() -> None:
    with pytest.raises(ValueError, match="paths"):
        connections_allow("{protocols:TCP,paths:/admin}", 80)
    with pytest.raises(ValueError, match="unexpected"):
        connections_allow("some new wording", 80)


def test_ip_destinations_are_found_in_ncas_ranges() -> None:
    ranges = "0.0.0.0-9.255.255.255,11.0.0.0-255.255.255.255"
    conn = Connectivity({("a/x[Pod]", ranges): "{protocols:TCP,dst_ports:443}"}, "")
    assert conn.allows("a/x[Pod]", "8.8.8.8", 443)
    assert not conn.allows("a/x[Pod]", "10.1.2.3", 443)
    assert not conn.allows("a/y[Pod]", "8.8.8.8", 443)
