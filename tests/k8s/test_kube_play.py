"""The one-machine translation of rendered manifests (tests/fixtures/kube_play.py), without containers.

It must refuse what it has not decided about, and never touch who a pod runs as: a rehearsal that
changed users, groups or securityContext would hide exactly what a cluster breaks on.
"""

from __future__ import annotations

import copy
import logging
import os
import stat
from pathlib import Path

import pytest
import yaml
from fixtures.kube_play import HostVolume, Options, RefusedError, Substitution, apply_fs_group, translate
from k8s_render import Resource

REPO_ROOT = Path(__file__).resolve().parents[2]
NVIDIA = "nvcr.io/nvidia/tritonserver"


OPERATOR_SECRETS = {"triton-admin-key": {"admin-key": "k" * 32}}  # created by the operator (docs/operations.md)


def _options(tmp_path: Path, **kwargs) -> Options:
    kwargs.setdefault("secrets", OPERATOR_SECRETS)
    return Options(suffix="t1", workdir=tmp_path, **kwargs)


def _deployment(resources: list[Resource], name: str = "triton") -> Resource:
    (found,) = [r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] == name]
    return found


def _prod_options(tmp_path: Path, image: str) -> Options:
    cpu = yaml.safe_load((REPO_ROOT / "k8s" / "components" / "triton-cpu" / "deployment.yaml").read_text())
    (server,) = cpu["spec"]["template"]["spec"]["containers"]
    swap = Substitution(image="ghcr.io/dino-mlops/dino-mlops:0.1.0", reason="no NVIDIA image here",
                        container="tritonserver", command=server["command"], args=server["args"],
                        env=tuple(server["env"]))
    return _options(tmp_path, substitutions={image: swap}, secrets={"triton-admin-key": {"admin-key": "k"}},
                    without_gpus="no GPU on this machine")


def test_refuses_an_unknown_kind(rendered, tmp_path: Path) -> None:
    resources = [*rendered["dev"], {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                    "metadata": {"name": "triton"}}]
    with pytest.raises(RefusedError, match="Ingress"):
        translate(resources, "Deployment", "triton", _options(tmp_path))
    with pytest.raises(RefusedError, match="StatefulSet"):
        translate(rendered["dev"], "StatefulSet", "triton", _options(tmp_path))


@pytest.mark.parametrize(("where", "field", "value"), [
    ("pod", "hostNetwork", True),
    ("pod", "priorityClassName", "high"),
    ("container", "stdin", True),
    ("container-security", "privileged", False),
    ("pod-security", "sysctls", []),
])
def test_refuses_a_field_it_has_not_decided_about(rendered, tmp_path: Path, where: str, field: str,
                                                  value: object) -> None:
    resources = copy.deepcopy(rendered["dev"])
    pod = _deployment(resources)["spec"]["template"]["spec"]
    target = {"pod": pod, "container": pod["containers"][0], "pod-security": pod["securityContext"],
              "container-security": pod["containers"][0]["securityContext"]}[where]
    target[field] = value
    with pytest.raises(RefusedError, match=field):
        translate(resources, "Deployment", "triton", _options(tmp_path))


def test_refuses_an_unknown_volume_type_gpus_and_an_absent_secret(rendered, tmp_path: Path) -> None:
    resources = copy.deepcopy(rendered["dev"])
    _deployment(resources)["spec"]["template"]["spec"]["volumes"].append(
        {"name": "host", "hostPath": {"path": "/etc"}})
    with pytest.raises(RefusedError, match="hostPath"):
        translate(resources, "Deployment", "triton", _options(tmp_path))
    prod = rendered["prod-gpu"]
    with pytest.raises(RefusedError, match="nvidia.com/gpu"):
        translate(prod, "Deployment", "triton", _options(tmp_path, secrets={"triton-admin-key": {"admin-key": "k"}}))
    with pytest.raises(RefusedError, match="triton-admin-key"):
        translate(prod, "Deployment", "triton", _options(tmp_path, without_gpus="none here", secrets={}))


@pytest.mark.parametrize("target", ["dev", "prod-gpu"])
def test_users_groups_and_security_context_are_played_as_rendered(rendered, tmp_path: Path, target: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    resources = rendered[target]
    before = copy.deepcopy(_deployment(resources)["spec"]["template"]["spec"])
    image = next(c["image"] for c in before["containers"])
    options = _prod_options(tmp_path, image) if target == "prod-gpu" else _options(tmp_path)
    with caplog.at_level(logging.INFO, logger="fixtures.kube_play"):
        plan = translate(resources, "Deployment", "triton", options)
    assert _deployment(resources)["spec"]["template"]["spec"] == before, "the rendered input is not modified"
    pod = plan.pod("triton")
    spec = pod.manifest["spec"]
    context = before["securityContext"]
    # the only addition: fsGroup as a supplementary group, which the kubelet gives and podman does not
    assert spec["securityContext"] == {**context, "supplementalGroups": [context["fsGroup"]]}
    played = {c["name"]: c for c in [*pod.init_containers, *spec["containers"]]}
    for container in [*before["initContainers"], *before["containers"]]:
        assert played[container["name"]]["securityContext"] == container["securityContext"]
        assert [m for m in played[container["name"]]["volumeMounts"]] == container["volumeMounts"]
    assert plan.volumes == {"triton-models": "triton-models-t1"}
    assert pod.claims == {"triton-models-t1": False} and pod.fs_group == context["fsGroup"]
    assert all(line in plan.changes for line in [r.getMessage().removeprefix("kube_play ") for r in caplog.records])
    if target == "dev":
        assert {c["image"] for c in played.values()} == {image}, "no image changes unless asked"
    else:
        assert {c["image"] for c in played.values()} == {"ghcr.io/dino-mlops/dino-mlops:0.1.0"}
        assert played["model-repository"]["command"] == before["initContainers"][0]["command"]
        assert played["tritonserver"]["command"] == ["dino-mlops", "serve"]
        assert any(f"image {NVIDIA}" in line and "no NVIDIA image here" in line for line in plan.changes)
        assert any("nvidia.com/gpu dropped: no GPU on this machine" in line for line in plan.changes)
        assert "nodeSelector" not in spec and "tolerations" not in spec
        resources_played = played["tritonserver"]["resources"]
        assert resources_played["limits"] == {"cpu": "8", "memory": "16Gi"}, "cpu and memory as rendered"


def test_args_are_expanded_from_the_container_env_as_the_kubelet_does(rendered, tmp_path: Path) -> None:
    plan = translate(rendered["dev"], "Deployment", "triton", _options(tmp_path))
    (server,) = plan.pod().manifest["spec"]["containers"]
    assert "--repository=/models/repository" in server["args"]
    assert not any("$(" in a for a in server["args"])
    assert set(server["ports"][0]) >= {"hostPort", "containerPort"}
    hosted = translate(rendered["dev"], "Deployment", "triton", _options(tmp_path, network="host"))
    assert "ports" not in hosted.pod().manifest["spec"]["containers"][0]


def test_pytorchjob_replicas_get_the_operators_env(rendered, tmp_path: Path) -> None:
    plan = translate(rendered["dev/pretrain"], "PyTorchJob", "dino-pretrain", _options(tmp_path, network="host"))
    assert [p.name for p in plan.pods] == ["dino-pretrain-t1-master-0", "dino-pretrain-t1-worker-0"]
    for rank, pod in enumerate(plan.pods):
        env = pod.env["pytorch"]
        assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == (str(rank), "2", "127.0.0.1")
        assert pod.manifest["spec"]["restartPolicy"] == "OnFailure", "the replica's restartPolicy"
        assert pod.claims == {"dino-datasets-t1": True, "dino-runs-t1": False}


def test_fs_group_semantics_of_the_kubelet(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    (root / "repository").mkdir(parents=True)
    (root / "repository" / "config.pbtxt").write_text("x")
    (root / "repository" / "config.pbtxt").chmod(0o600)
    root.chmod(0o755)
    gid = os.getgid() if os.geteuid() != 0 else 4242
    apply_fs_group(root, gid)
    for path, mode in [(root, 0o2775), (root / "repository", 0o2775), (root / "repository" / "config.pbtxt", 0o660)]:
        info = path.stat()
        assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, mode), path
    # OnRootMismatch: a root that already matches leaves everything below as it is
    (root / "repository" / "config.pbtxt").chmod(0o600)
    apply_fs_group(root, gid, on_root_mismatch=True)
    assert stat.S_IMODE((root / "repository" / "config.pbtxt").stat().st_mode) == 0o600
    root.chmod(0o755)
    apply_fs_group(root, gid, on_root_mismatch=True)
    assert stat.S_IMODE((root / "repository" / "config.pbtxt").stat().st_mode) == 0o660


def test_the_cronjob_pod_fits_the_same_translation(rendered, tmp_path: Path) -> None:
    """What tests/containers/test_retrain_cronjob.py needs: the job's pod, its Secret given as an operator
    creates it, the projected KFP token as a host file, an added folder; an optional absent Secret unset."""
    repo = HostVolume(name="data-repository", path=tmp_path / "data", container="retrain-check",
                      mount_path="/srv/data")
    with pytest.raises(RefusedError, match="service_account_token"):
        translate(rendered["dev"], "CronJob", "retrain-check", _options(tmp_path, network="host"))
    plan = translate(rendered["dev"], "CronJob", "retrain-check", _options(
        tmp_path, network="host", service_account_token="token", host_volumes=(repo,),
        secrets={"data-repo-credentials": {"username": "u", "token": "t"}}))
    pod = plan.pod("retrain-check")
    (container,) = pod.manifest["spec"]["containers"]
    assert pod.env["retrain-check"]["DINO_GIT_USERNAME"] == "u"
    assert "envFrom optional Secret dvc-remote-credentials absent" in " ".join(plan.changes)
    assert [f.files for f in plan.folders] == [{"token": "token"}]
    assert {"name": "data-repository", "mountPath": "/srv/data", "readOnly": True} in container["volumeMounts"]
    assert plan.volumes == {"retrain-state": "retrain-state-t1"} and pod.fs_group == 10001
