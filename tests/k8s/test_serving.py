"""Triton's Deployment, Services, autoscaler and disruption budget, as rendered for each environment."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from k8s_render import ADAPTER_VALUES, INSTALLS, find, one, render, selector_matches

RULES_SOURCE = Path(__file__).resolve().parents[2] / "dino_model" / "monitoring" / "rules.yml"
ENVS = sorted(INSTALLS)


def _triton(rendered, env):
    return one(rendered[env], "Deployment", "triton")


def _container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("env", ENVS)
def test_rolling_update_is_gated_on_readiness(rendered, env: str) -> None:
    deployment = _triton(rendered, env)
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] >= 1
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    c = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("startupProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading needs minutes"
    args = c["args"]
    for flag in ("--model-control-mode=explicit", "--strict-readiness=true", "--load-model=$(MODEL_NAME)",
                 "--model-repository=$(MODEL_REPOSITORY)", "--http-port=8000", "--grpc-port=8001",
                 "--metrics-port=8002", "--metrics-config=summary_latencies=true"):
        assert flag in args, flag


@pytest.mark.parametrize("env", ENVS)
def test_triton_image_is_a_pinned_release(rendered, env: str) -> None:
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", _container(_triton(rendered, env))["image"])


@pytest.mark.parametrize("env", ENVS)
def test_model_repository_is_a_read_only_claim(rendered, env: str) -> None:
    deployment = _triton(rendered, env)
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    claim = one(rendered[env], "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    cm_name = next(e for e in _container(deployment)["env"] if e["name"] == "MODEL_REPOSITORY")
    config = one(rendered[env], "ConfigMap", cm_name["valueFrom"]["configMapKeyRef"]["name"])
    assert config["data"]["MODEL_REPOSITORY"].startswith("/models/releases/")
    assert claim["spec"]["accessModes"] == (["ReadWriteMany"] if env == "prod-gpu" else ["ReadWriteOnce"])


def test_gpu_only_in_prod(rendered) -> None:
    prod, dev = (_triton(rendered, env) for env in ("prod-gpu", "dev"))
    res = _container(prod)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        prod["spec"]["template"]["spec"]["tolerations"])
    assert "nvidia.com/gpu" not in str(_container(dev)["resources"])


def test_a_new_model_release_rolls_the_deployment(rendered, tmp_path) -> None:
    """Changing MODEL_REPOSITORY changes only the generated ConfigMap's name in the pod template."""
    overlay = os.path.relpath(INSTALLS["prod-gpu"], tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"""\
resources:
  - {overlay}
configMapGenerator:
  - name: triton-model
    behavior: merge
    literals:
      - MODEL_REPOSITORY=/models/releases/2
""")
    before = _triton(rendered, "prod-gpu")["spec"]["template"]
    after_resources = render(tmp_path)
    after = one(after_resources, "Deployment", "triton")["spec"]["template"]
    assert before != after
    old_name = _env_source(before, "MODEL_REPOSITORY")
    new_name = _env_source(after, "MODEL_REPOSITORY")
    assert old_name != new_name
    assert one(after_resources, "ConfigMap", new_name)["data"]["MODEL_REPOSITORY"] == "/models/releases/2"
    assert yaml.safe_dump(before).replace(old_name, new_name) == yaml.safe_dump(after)


def _env_source(template, name: str) -> str:
    env = next(e for e in template["spec"]["containers"][0]["env"] if e["name"] == name)
    return env["valueFrom"]["configMapKeyRef"]["name"]


@pytest.mark.parametrize("env", ENVS)
def test_services_reach_triton(rendered, env: str) -> None:
    labels = _triton(rendered, env)["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in find(rendered[env], "Service")}
    assert set(services) == {"triton", "triton-grpc"}
    container_ports = {p["name"] for p in _container(_triton(rendered, env))["ports"]}
    for service in services.values():
        assert selector_matches(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    assert services["triton-grpc"]["spec"]["clusterIP"] == "None"
    assert "grpc" in {p["name"] for p in services["triton-grpc"]["spec"]["ports"]}


@pytest.mark.parametrize("env", ENVS)
def test_servicemonitor_scrapes_exactly_the_triton_service(rendered, env: str) -> None:
    monitor = one(rendered[env], "ServiceMonitor", "triton")
    (endpoint,) = monitor["spec"]["endpoints"]
    matched = [s for s in find(rendered[env], "Service")
               if selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
               and endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
    assert [s["metadata"]["name"] for s in matched] == ["triton"]
    # Prometheus' job label is the Service name; the TritonDown alert selects it by regex
    job_regex = re.search(r'up\{job=~"([^"]+)"\}', RULES_SOURCE.read_text()).group(1)
    assert re.fullmatch(job_regex, matched[0]["metadata"]["name"])
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (resource,) = find(rendered[env], kind)
        assert resource["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind


@pytest.mark.parametrize("env", ENVS)
def test_autoscaler_and_disruption_budget(rendered, env: str) -> None:
    hpa = one(rendered[env], "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert one(rendered[env], target["kind"], target["name"]) is _triton(rendered, env)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(rendered[env], "PodDisruptionBudget", "triton")
    labels = _triton(rendered, env)["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(pdb["spec"]["selector"], labels)
    if env == "prod-gpu":
        assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1, "a drain must leave one serving"


def test_hpa_metric_is_served_by_the_adapter(rendered) -> None:
    pods = one(rendered["prod-gpu"], "HorizontalPodAutoscaler", "triton")["spec"]["metrics"][0]["pods"]
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == pods["metric"]["name"]]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert {"namespace", "pod"} == set(rule["resources"]["overrides"])
    # tests/k8s/test_adapter_query.py checks the query's numbers and the target against the alert
