"""The retraining CronJob: schedule semantics, least rights, credentials from Secrets, writable paths
under a read-only root filesystem, and a command the CLI accepts."""

from __future__ import annotations

import importlib.util
from pathlib import PurePosixPath

import pytest
import yaml
from k8s_render import INSTALLS, find, one

ENVS = sorted(INSTALLS)


def _cron(rendered, env):
    return one(rendered[env], "CronJob", "retrain-check")


def _pod(cron):
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("env", ENVS)
def test_cronjob_schedule_and_command(rendered, env: str) -> None:
    cron = _cron(rendered, env)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5, "Kubernetes cron has five fields"
    (container,) = _pod(cron)["containers"]
    assert [*container["command"], *container["args"]] == ["dino-mlops", "retrain", "check"]
    assert container["image"] == "ghcr.io/dino-mlops/dino-mlops:0.1.0"
    assert _pod(cron)["restartPolicy"] == "Never"


@pytest.mark.parametrize("env", ENVS)
def test_retrain_has_no_kubernetes_rights(rendered, env: str) -> None:
    """It talks to git, the DVC remote and KFP over HTTP: no RoleBinding names its ServiceAccount."""
    account = _pod(_cron(rendered, env))["serviceAccountName"]
    for binding in find(rendered[env], "RoleBinding") + find(rendered[env], "ClusterRoleBinding"):
        assert account not in {s["name"] for s in binding["subjects"]}
    kfp = next(v for v in _pod(_cron(rendered, env))["volumes"] if v["name"] == "kfp-token")
    (source,) = kfp["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"


@pytest.mark.parametrize("env", ENVS)
def test_writable_paths_are_volumes(rendered, env: str) -> None:
    """With a read-only root filesystem, DVC's site cache, HOME and the workspace must be mounts."""
    pod = _pod(_cron(rendered, env))
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env_values = {e["name"]: e.get("value") for e in container["env"]}
    assert env_values["DVC_NO_ANALYTICS"] == "1"
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]
                if m["name"] in empty_dirs and not m.get("readOnly")]
    for path in (env_values["DVC_SITE_CACHE_DIR"], env_values["HOME"], container["workingDir"]):
        assert any(PurePosixPath(path).is_relative_to(w) for w in writable), f"{path} is not on a writable volume"


@pytest.mark.parametrize("env", ENVS)
def test_credentials_come_from_secrets(rendered, env: str) -> None:
    pod = _pod(_cron(rendered, env))
    (container,) = pod["containers"]
    secret_refs = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
    assert secret_refs == {"dvc-remote-credentials"}
    git = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {n: (r["name"], r["key"], r["optional"]) for n, r in git.items() if n.startswith("DINO_GIT_")} == {
        "DINO_GIT_USERNAME": ("data-repo-credentials", "username", True),
        "DINO_GIT_TOKEN": ("data-repo-credentials", "token", True)}, "the data step's Secret, as the pipeline uses"
    assert not any(e["name"].startswith("GIT_CONFIG_") for e in container["env"]), "git_environment() sets them"
    assert "password" not in str(container["env"]).lower() and "token=" not in str(container["env"]).lower()
    settings = one(rendered[env], "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])
    assert {"DINO_DATA_REPO", "DINO_DATA_REV", "KFP_HOST", "DINO_TRITON_URL"} <= set(settings["data"])


@pytest.mark.parametrize("env", ENVS)
def test_state_outlives_the_job(rendered, env: str) -> None:
    """The state file is on a claim: on an emptyDir every Job would start afresh and submit again."""
    pod = _pod(_cron(rendered, env))
    (container,) = pod["containers"]
    state = PurePosixPath(next(e["value"] for e in container["env"] if e["name"] == "DINO_RETRAIN_STATE"))
    mount = next(m for m in container["volumeMounts"] if state.is_relative_to(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    claim = one(rendered[env], "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and not mount.get("readOnly")


def test_the_cli_accepts_the_cronjob_command(rendered) -> None:
    if importlib.util.find_spec("dino_model.cli.retrain") is None:
        pytest.skip("dino_model/cli/retrain.py (`dino-mlops retrain check`) does not exist yet")
    from dino_model.cli.main import build_parser

    (container,) = _pod(_cron(rendered, "prod-gpu"))["containers"]
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert callable(args.func)


def _pod_environment(rendered, env: str) -> dict[str, str]:
    """The retraining container's environment as the pod gets it: its ConfigMaps, then its `env` values."""
    (container,) = _pod(_cron(rendered, env))["containers"]
    environ: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            environ |= one(rendered[env], "ConfigMap", source["configMapRef"]["name"])["data"]
    environ |= {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return environ


def _settings(rendered, env: str):
    from pipelines.retrain_settings import settings_from_env

    return settings_from_env(_pod_environment(rendered, env))  # refuses parameters the pipeline lacks


# what each install's retraining runs must be: the paper's recipe on GPUs, or the CPU-sized one
SIZES = {"prod-gpu": {"gpus": 8, "config": "paper_vit_small", "triton_flavour": "gpu"},
         "dev": {"gpus": 0, "config": "digits_vit_tiny", "triton_flavour": "cpu"}}


@pytest.mark.parametrize("env", ENVS)
def test_retraining_submits_the_overlays_own_run(rendered, env: str) -> None:
    """The parameters the pod submits name this overlay's namespace, image and sizes, not the pipeline's defaults."""
    settings = _settings(rendered, env)
    cron = _cron(rendered, env)
    (container,) = _pod(cron)["containers"]
    namespace = cron["metadata"]["namespace"]
    host = settings.params["triton_url"].rsplit(":", 1)[0]
    assert host.split(".")[:2] == ["triton-grpc", namespace], f"{env} deploys to {host}, not its namespace {namespace}"
    one(rendered[env], "Service", "triton-grpc")
    assert settings.image == container["image"], "a pipeline compiled in the pod must run the overlay's image"
    assert {k: settings.params.get(k) for k in SIZES[env]} == SIZES[env]
    assert settings.namespace == namespace, "pipeline pods must run where the claim and the Secrets are"


def test_an_operator_overlay_in_kubeflow_retrains_in_kubeflow(tmp_path) -> None:
    """Standalone KFP: the overlay installed into `kubeflow` (with the replacements every overlay carries)
    submits its runs there and deploys to the Triton there."""
    from k8s_nca import render_in_namespace
    from k8s_render import REPO_ROOT

    for overlay in ("dev", "prod-gpu"):
        rendered = {overlay: render_in_namespace(REPO_ROOT / "k8s" / "overlays" / overlay, "kubeflow",
                                                 tmp_path / overlay)}
        settings = _settings(rendered, overlay)
        assert settings.namespace == "kubeflow"
        assert settings.params["triton_url"] == "triton-grpc.kubeflow.svc:8001"


def test_every_overlay_carries_the_namespace_replacements() -> None:
    from k8s_nca import namespace_replacements
    from k8s_render import REPO_ROOT

    for overlay in ("dev", "prod-gpu"):
        own = yaml.safe_load((REPO_ROOT / "k8s" / "overlays" / overlay / "kustomization.yaml").read_text())
        assert own["replacements"] == namespace_replacements(), overlay


def test_a_registered_pipeline_version_is_the_image_tag(rendered) -> None:
    """prod-gpu runs the registered version named after the image it was compiled with; dev compiles its own."""
    settings = _settings(rendered, "prod-gpu")
    (container,) = _pod(_cron(rendered, "prod-gpu"))["containers"]
    assert settings.registered == f"dino-training@{container['image'].rsplit(':', 1)[1]}"
    assert _settings(rendered, "dev").registered is None


def test_the_settings_reader_refuses_a_misspelt_parameter(rendered) -> None:
    from dino_model.errors import ConfigError
    from pipelines.retrain_settings import settings_from_env

    environ = {**_pod_environment(rendered, "dev"), "DINO_PARAM_gpu": "0"}
    with pytest.raises(ConfigError, match="gpu: not a parameter of the training pipeline"):
        settings_from_env(environ)
