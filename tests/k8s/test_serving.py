"""Triton's Deployment, Services, autoscaler and disruption budget, as rendered for each environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from k8s_render import ADAPTER_VALUES, INSTALLS, find, one, selector_matches

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
    args = _triton_args(c)
    for flag in ("--model-control-mode=explicit", "--strict-readiness=true", "--load-model=*",
                 "--model-repository=$(MODEL_REPOSITORY)", "--http-port=8000", "--grpc-port=8001",
                 "--metrics-port=8002", "--metrics-config=summary_latencies=true"):
        assert flag in args, flag
    restriction = "model-repository,shared-memory,trace,logging:admin-key=$(TRITON_ADMIN_KEY)"
    assert {f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"} <= set(args)


def _triton_args(container: dict) -> list[str]:
    """tritonserver's flags: the container's own, or those `dino-mlops serve` (dev) passes for its args."""
    if container["command"] == ["tritonserver"]:
        return container["args"]
    from dino_model.cli.main import build_parser
    from dino_model.serving.server import TritonServer

    assert container["command"] == ["dino-mlops", "serve"]
    args = build_parser().parse_args(["serve", *container["args"]])
    server = TritonServer(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, address=args.address, models=args.model or ("*",),
                          admin_key="k" * 32)
    return [a.replace("--model-repository=" + str(server.repository), "--model-repository=$(MODEL_REPOSITORY)")
            for a in server.command(None, key="$(TRITON_ADMIN_KEY)")[1:]]


def test_triton_images(rendered) -> None:
    """prod-gpu: NVIDIA's image, pinned; dev (CPU): the project image, whose Python has onnxruntime."""
    from components._image import IMAGE

    prod = _triton(rendered, "prod-gpu")["spec"]["template"]["spec"]
    for container in (*prod["containers"], *prod["initContainers"]):
        assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", container["image"])
    dev = _triton(rendered, "dev")["spec"]["template"]["spec"]
    assert {c["image"] for c in (*dev["containers"], *dev["initContainers"])} == {IMAGE}
    assert dev["securityContext"]["runAsUser"] == 10001  # the project image's user


@pytest.mark.parametrize("env", ENVS)
def test_model_repository_is_a_claim_triton_only_reads(rendered, env: str) -> None:
    """Triton mounts the claim read-only; its init container only creates the repository folder on it."""
    deployment = _triton(rendered, env)
    pod = deployment["spec"]["template"]["spec"]
    mount = next(m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == "/models")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"]
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["sh", "-c"] and 'mkdir -p "$MODEL_REPOSITORY"' in init["command"][2]
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/models"]
    claim = one(rendered[env], "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    cm_name = next(e for e in _container(deployment)["env"] if e["name"] == "MODEL_REPOSITORY")
    config = one(rendered[env], "ConfigMap", cm_name["valueFrom"]["configMapKeyRef"]["name"])
    assert config["data"]["MODEL_REPOSITORY"] == "/models/repository"
    assert claim["spec"]["accessModes"] == (["ReadWriteMany"] if env == "prod-gpu" else ["ReadWriteOnce"])


@pytest.mark.parametrize("env", ENVS)
def test_the_repository_belongs_to_the_deploy_steps_group(rendered, env: str) -> None:
    """The deploy step runs as the project image's uid/gid (KFP sets no pod securityContext): Triton's pod gives
    the claim that group (fsGroup) and its init container makes the repository folder that group's, setgid and
    group-writable, whatever user Triton itself runs as (1000 in NVIDIA's image, 10001 in dev)."""
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    gid = int(re.findall(r"^USER \d+:(\d+)$", dockerfile, re.M)[-1])
    pod = _triton(rendered, env)["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == gid
    (init,) = pod["initContainers"]
    script = init["command"][2]
    assert "umask 002" in script and f"chgrp {gid} " in script and "chmod 2775 " in script


def test_the_pipeline_deploy_step_writes_where_triton_reads(rendered, tmp_path) -> None:
    """The compiled pipeline's deploy step mounts Triton's claim at the same path, gets the admin key from the
    Secret Triton reads, and names the headless Service (every replica), all as the manifests define them."""
    import inspect

    from kfp import compiler

    from pipelines.training import dino_training_pipeline

    compiler.Compiler().compile(dino_training_pipeline, str(tmp_path / "p.yaml"))
    docs = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    deploy = next(v for k, v in executors.items() if "deploy-to-triton" in k)
    (pvc,) = deploy["pvcMount"]
    triton = _triton(rendered, "prod-gpu")
    pod = triton["spec"]["template"]["spec"]
    mount = next(m for m in _container(triton)["volumeMounts"] if m["name"] == "models")
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert pvc["constant"] == claim and pvc["mountPath"] == mount["mountPath"]
    secret = next(s for s in deploy["secretAsEnv"] if s["keyToEnv"][0]["envVar"] == "TRITON_ADMIN_KEY")
    key_ref = next(e for e in _container(triton)["env"] if e["name"] == "TRITON_ADMIN_KEY")["valueFrom"]["secretKeyRef"]
    assert secret["secretNameParameter"]["runtimeValue"]["constant"] == key_ref["name"]
    assert secret["keyToEnv"] == [{"envVar": "TRITON_ADMIN_KEY", "secretKey": key_ref["key"]}]
    assert deploy["podMetadata"]["labels"] == {"dino-mlops/triton-client": "true"}
    defaults = inspect.signature(dino_training_pipeline.pipeline_func).parameters
    assert defaults["triton_repository"].default == "/models/repository"
    host = defaults["triton_url"].default.split(":")[0]
    service = one(rendered["prod-gpu"], "Service", host.split(".")[0])
    assert service["spec"]["clusterIP"] == "None" and host.split(".")[1] == service["metadata"]["namespace"]


def test_gpu_only_in_prod(rendered) -> None:
    prod, dev = (_triton(rendered, env) for env in ("prod-gpu", "dev"))
    res = _container(prod)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        prod["spec"]["template"]["spec"]["tolerations"])
    assert "nvidia.com/gpu" not in str(_container(dev)["resources"])


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
