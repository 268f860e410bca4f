"""The NetworkPolicies allow what each workload needs and nothing else (evaluated by k8s_netpol)."""

from __future__ import annotations

import pytest
from k8s_netpol import Endpoint, allowed
from k8s_render import INSTALLS, all_pod_templates, find, selector_matches

NAMESPACE = {"dev": "dino-mlops-dev", "prod-gpu": "dino-mlops"}
KFP_API = Endpoint("kubeflow", {"app": "ml-pipeline"})
KFP_TASK = Endpoint("kubeflow", {"pipelines.kubeflow.org/v2_component": "true"})
PROMETHEUS = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus"})
PUSHGATEWAY = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus-pushgateway"})
DNS = Endpoint("kube-system", {"k8s-app": "kube-dns"})
INTERNET = Endpoint(external=True)
# policies for pods that users add (inference clients labelled dino-mlops/triton-client=true)
FOR_USER_PODS = {"triton-clients"}


def _pods(rendered, env: str) -> dict[str, Endpoint]:
    ns = NAMESPACE[env]
    templates = all_pod_templates(rendered[env]) + all_pod_templates(rendered[f"{env}/pretrain"])
    pods = {where.split("/")[1].split("[")[0]: Endpoint(ns, t["metadata"]["labels"]) for where, t in templates}
    pods["other"] = Endpoint(ns, {"app": "something-else"})
    pods["client"] = Endpoint(ns, {"dino-mlops/triton-client": "true"})
    return pods


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_every_policy_selects_a_workload(rendered, env: str) -> None:
    templates = all_pod_templates(rendered[env]) + all_pod_templates(rendered[f"{env}/pretrain"])
    policies = find(rendered[env], "NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies), "no default deny"
    for policy in policies:
        if policy["metadata"]["name"] in FOR_USER_PODS:
            continue
        assert any(selector_matches(policy["spec"]["podSelector"], t["metadata"]["labels"]) for _, t in templates)


@pytest.mark.parametrize("env", sorted(INSTALLS))
def test_allowed_connections(rendered, env: str) -> None:
    policies = find(rendered[env], "NetworkPolicy")
    pods = _pods(rendered, env)
    triton, retrain, pretrain = pods["triton"], pods["retrain-check"], pods["dino-pretrain"]
    should_allow = [
        (PROMETHEUS, triton, 8002),
        (pods["client"], triton, 8001),
        (pods["client"], triton, 8000),
        (KFP_TASK, triton, 8001),  # the pipeline's smoke test
        (retrain, KFP_API, 8888),
        (retrain, INTERNET, 443),  # git host and DVC remote
        (retrain, PUSHGATEWAY, 9091),
        (retrain, triton, 8001),  # the served model's lineage (gRPC)
        (pretrain, pretrain, 23456),  # torchrun rendezvous
        (pretrain, pretrain, 41234),  # NCCL's run-time ports
        (pretrain, PUSHGATEWAY, 9091),
        *[(pod, DNS, 53) for pod in (triton, retrain, pretrain)],
    ]
    should_deny = [
        (PROMETHEUS, triton, 8001),
        (KFP_TASK, triton, 8002),
        (pods["other"], triton, 8001),
        (triton, INTERNET, 443),
        (triton, KFP_API, 8888),
        (retrain, triton, 8002),
        (retrain, INTERNET, 80),
        (pretrain, INTERNET, 443),
        (pods["other"], pretrain, 23456),
        (INTERNET, triton, 8000),
    ]
    assert [c for c in should_allow if not allowed(policies, *c)] == []
    assert [c for c in should_deny if allowed(policies, *c)] == []


def test_dns_over_udp_is_allowed_and_other_udp_is_not(rendered) -> None:
    policies = find(rendered["prod-gpu"], "NetworkPolicy")
    triton = _pods(rendered, "prod-gpu")["triton"]
    assert allowed(policies, triton, DNS, 53, "UDP")
    assert not allowed(policies, triton, DNS, 123, "UDP")
