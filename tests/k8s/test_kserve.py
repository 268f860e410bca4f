"""The KServe option (k8s/components/kserve, rendered through k8s/overlays/kserve): valid against KServe's
own CRDs, and the same model repository claim, admin key, metrics and network rules as the plain Deployment.

KServe is not installed here, so the predictor pod is assembled the way KServe's controller does from
the InferenceService and its ServingRuntime (the predictor's labels and pod fields, the runtime's
containers and volumes); what selects, scrapes and admits Triton today must select it.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import re
from pathlib import Path

import pytest
import yaml
from k8s_render import K8S_DIR, Resource, find, name_of, one, render, selector_matches
from k8s_schema import FULL_CRDS, SCHEMA_DIR, k8s_versions, schema_errors

KSERVE = K8S_DIR / "overlays" / "kserve"
BASE_DEPLOYMENT = K8S_DIR / "base" / "triton" / "deployment.yaml"
NEW_KINDS = {"ServingRuntime", "InferenceService"}


@pytest.fixture(scope="module")
def kserve() -> list[Resource]:
    return render(KSERVE)


def _runtime(resources: list[Resource]) -> Resource:
    return one(resources, "ServingRuntime", "dino-triton")


def _isvc(resources: list[Resource]) -> Resource:
    return one(resources, "InferenceService", "dino")


def _predictor_pod(resources: list[Resource]) -> tuple[dict[str, str], dict]:
    """(labels, pod spec) of a predictor pod as KServe builds it (RawDeployment)."""
    predictor, runtime = _isvc(resources)["spec"]["predictor"], _runtime(resources)["spec"]
    labels = {**predictor.get("labels", {}), "serving.kserve.io/inferenceservice": "dino", "component": "predictor"}
    spec = {k: v for k, v in predictor.items() if k not in {"model", "labels", "annotations", "minReplicas",
                                                             "maxReplicas", "scaleMetric", "scaleTarget"}}
    spec["containers"] = runtime["containers"]
    spec["volumes"] = runtime.get("volumes", [])
    return labels, spec


@pytest.mark.parametrize("version", k8s_versions())
def test_every_resource_validates(kserve, version: str) -> None:
    """KServe kinds against KServe's published CRDs, the rest against Kubernetes' OpenAPI schemas (strict)."""
    assert {r["kind"] for r in kserve} >= NEW_KINDS
    failures = {name_of(r): errs for r in kserve if (errs := schema_errors(r, version=version))}
    assert not failures, failures


def test_stored_crds_are_kserves_published_files() -> None:
    """Byte copies (gzipped) of KServe's config/crd/full/*.yaml, as recorded in schemas/README.md: not reduced."""
    readme = (SCHEMA_DIR / "README.md").read_text()
    for (api_version, kind), file_name in FULL_CRDS.items():
        text = gzip.decompress((SCHEMA_DIR / "kserve" / file_name).read_bytes())
        assert hashlib.sha256(text).hexdigest() in readme, file_name
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
        group, version = api_version.split("/")
        assert (crd["kind"], crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (
            "CustomResourceDefinition", group, kind)
        assert version in {v["name"] for v in crd["spec"]["versions"] if v["served"]}


@pytest.mark.parametrize(("kind", "path", "value", "expect"), [
    ("InferenceService", ("spec", "predictor", "model", "storageURI"), "pvc://x", "'storageURI' was unexpected"),
    ("InferenceService", ("spec", "predictor", "minReplicas"), "one", "is not of type 'integer'"),
    ("InferenceService", ("spec", "predictor", "model", "modelFormat"), {"version": "2"}, "'name' is a required"),
    ("ServingRuntime", ("spec", "containers", 0, "port"), 8000, "'port' was unexpected"),
    ("ServingRuntime", ("spec", "supportedModelFormats", 0, "autoSelect"), "yes", "is not of type 'boolean'"),
])
def test_crd_validation_rejects(kserve, kind: str, path: tuple, value, expect: str) -> None:
    bad = copy.deepcopy(one(kserve, kind, "dino" if kind == "InferenceService" else "dino-triton"))
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = schema_errors(bad, version=k8s_versions()[-1])
    assert any(expect in e for e in errors), errors


def test_one_server_per_repository(kserve) -> None:
    """KServe owns the predictor's Deployment and scaling; the plain Deployment and its autoscaler are gone."""
    assert not find(kserve, "Deployment", "triton") and not find(kserve, "HorizontalPodAutoscaler", "triton")
    for kind, name in (("Service", "triton"), ("Service", "triton-grpc"), ("ServiceMonitor", "triton"),
                       ("PodDisruptionBudget", "triton"), ("PersistentVolumeClaim", "triton-models")):
        one(kserve, kind, name)


def test_runtime_and_inference_service_agree(kserve) -> None:
    runtime, model = _runtime(kserve), _isvc(kserve)["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges the predictor's container into
    assert container["image"].startswith("ghcr.io/dino-mlops/dino-mlops:")  # the images component applied
    assert _isvc(kserve)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_same_claim_and_folder_as_the_plain_deployment(kserve) -> None:
    """pvc://<claim>/<folder>: the claim and folder the plain Deployment serves and the deploy step writes."""
    base = yaml.safe_load(BASE_DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    (claim,) = [v["persistentVolumeClaim"]["claimName"] for v in base["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m["mountPath"] for m in base["containers"][0]["volumeMounts"] if m["name"] == "models"]
    repository = one(kserve, "ConfigMap", _config_map_name(kserve))["data"]["MODEL_REPOSITORY"]
    folder = Path(repository).relative_to(mount)
    assert _isvc(kserve)["spec"]["predictor"]["model"]["storageUri"] == f"pvc://{claim}/{folder}"
    (container,) = _runtime(kserve)["spec"]["containers"]
    assert "--repository=/mnt/models" in container["args"]  # where KServe mounts a storageUri


def _config_map_name(resources: list[Resource]) -> str:
    """The generated (hash-suffixed) name of the ConfigMap triton-model."""
    (name,) = [r["metadata"]["name"] for r in find(resources, "ConfigMap") if re.fullmatch(
        r"triton-model(-[a-z0-9]+)?", r["metadata"]["name"])]
    return name


def test_admin_key_comes_from_the_secret_and_stays_off_every_command_line(kserve) -> None:
    from dino_model.cli.main import build_parser
    from dino_model.serving.admin_key import ADMIN_KEY_ENV

    base_env = yaml.safe_load(BASE_DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"][0]["env"]
    (container,) = _runtime(kserve)["spec"]["containers"]
    key_env = [e for e in container["env"] if e["name"] == ADMIN_KEY_ENV]
    assert key_env == [e for e in base_env if e["name"] == ADMIN_KEY_ENV]  # Secret triton-admin-key, admin-key
    assert "value" not in key_env[0] and not find(kserve, "Secret")
    line = " ".join(container["command"] + container["args"])
    assert "TRITON_ADMIN_KEY" not in line and "admin-key" not in line  # no $(VAR) expansion into argv
    # `dino-mlops serve` reads the variable and passes tritonserver a placeholder (argv_secret)
    assert container["command"] == ["dino-mlops", "serve"]
    args = build_parser().parse_args(["serve", *container["args"]])
    assert args.admin_key_file is None  # so run_serve takes the key from $TRITON_ADMIN_KEY (key_from_env)
    assert (args.address, args.http_port, args.grpc_port, args.metrics_port) == ("0.0.0.0", 8000, 8001, 8002)


def test_predictor_pods_are_selected_like_the_triton_pods(kserve) -> None:
    labels, spec = _predictor_pod(kserve)
    for kind, name in (("Service", "triton"), ("Service", "triton-grpc")):
        service = one(kserve, kind, name)
        assert selector_matches(service["spec"]["selector"], labels), name
        ports = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    monitor = one(kserve, "ServiceMonitor", "triton")
    assert selector_matches(monitor["spec"]["selector"], one(kserve, "Service", "triton")["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}  # Triton's :8002, drift gauges included
    assert selector_matches(one(kserve, "PodDisruptionBudget", "triton")["spec"]["selector"], labels)
    selecting = {p["metadata"]["name"] for p in find(kserve, "NetworkPolicy")
                 if selector_matches(p["spec"]["podSelector"], labels)}
    assert {"default-deny", "allow-dns", "triton", "triton-kserve-ingress"} <= selecting


def test_kserve_ingress_reaches_only_the_rest_port(kserve) -> None:
    policy = one(kserve, "NetworkPolicy", "triton-kserve-ingress")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in rule["from"]] == [
        {"kubernetes.io/metadata.name": "istio-system"}]


def test_predictor_pod_runs_as_the_repository_group_without_privileges(kserve) -> None:
    labels, spec = _predictor_pod(kserve)
    assert spec["securityContext"]["fsGroup"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["serviceAccountName"] == "triton" and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts and {v["name"] for v in spec["volumes"]} == {"tmp", "dshm"}
    assert container["resources"]["limits"]["cpu"] == "2"  # the cpu flavour sizes itself from this quota


def test_overlay_carries_the_namespace_replacements(kserve, tmp_path) -> None:
    """Installed into another namespace, the retraining runs still deploy to the Triton there (through the
    Service triton-grpc, which selects the predictor pods) and run where the claim is."""
    from k8s_nca import namespace_replacements, render_in_namespace

    own = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    assert own["replacements"] == namespace_replacements()
    (settings,) = [r for r in render_in_namespace(KSERVE, "serving", tmp_path) if r["kind"] == "ConfigMap"
                   and r["metadata"]["name"].startswith("retrain-settings")]
    assert settings["data"]["DINO_PARAM_triton_url"] == "triton-grpc.serving.svc:8001"
    assert settings["data"]["KFP_NAMESPACE"] == "serving"
    assert settings["data"]["DINO_PARAM_triton_flavour"] == "cpu"  # what the runtime serves


def test_network_policies_admit_the_gateway_prometheus_and_clients_only(kserve, tmp_path) -> None:
    """nca over the rendered policies and the predictor pod beside modelled neighbours."""
    from k8s_nca import Pod, analyze, namespace_manifest

    namespace = _isvc(kserve)["metadata"]["namespace"]
    labels, _ = _predictor_pod(kserve)
    predictor = Pod(namespace, "dino-predictor", labels)
    gateway = Pod("istio-system", "istio-ingressgateway", {"app": "istio-ingressgateway"})
    prometheus = Pod("monitoring", "prometheus", {"app.kubernetes.io/name": "prometheus"})
    client = Pod(namespace, "client", {"dino-mlops/triton-client": "true"})
    neighbour = Pod(namespace, "neighbour", {"app": "other"})
    outsider = Pod("elsewhere", "outsider", {"app": "other"})
    dns = Pod("kube-system", "coredns", {"k8s-app": "kube-dns"})
    pods = [predictor, gateway, prometheus, client, neighbour, outsider, dns]
    world = [namespace_manifest(n) for n in sorted({p.namespace for p in pods})] + [p.manifest() for p in pods]
    links = analyze(find(kserve, "NetworkPolicy"), world, tmp_path)
    to = predictor.endpoint
    assert links.allows(gateway.endpoint, to, 8000) and not links.allows(gateway.endpoint, to, 8001)
    assert links.allows(prometheus.endpoint, to, 8002) and not links.allows(prometheus.endpoint, to, 8001)
    assert links.allows(client.endpoint, to, 8001) and links.allows(client.endpoint, to, 8000)
    for stranger in (neighbour, outsider):
        assert not any(links.allows(stranger.endpoint, to, port) for port in (8000, 8001, 8002)), stranger.name
    assert links.allows(to, dns.endpoint, 53, "UDP") and not links.allows(to, outsider.endpoint, 443)
