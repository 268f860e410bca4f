"""The operator's guide matches the tree it describes."""

from __future__ import annotations

import re

from k8s_render import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "operations.md"


def test_paths_in_the_guide_exist() -> None:
    text = GUIDE.read_text()
    paths = set(re.findall(r"`(k8s/[^`\s]*)`", text)) | set(re.findall(r"\s(k8s/[\w./-]+)", text))
    assert len(paths) >= 8
    for path in paths:
        expanded = [path.replace("{dev,prod-gpu}", env) for env in ("dev", "prod-gpu")]
        assert all(any(REPO_ROOT.glob(p.rstrip("/"))) for p in expanded), path


def test_guide_covers_install_order_settings_and_model_rollouts() -> None:
    text = GUIDE.read_text()
    for heading in ("## Install order", "## What to set", "## Putting a new model in service"):
        assert heading in text
    for command in ("kubectl apply -k k8s/overlays/prod-gpu", "rollout status deployment/triton",
                    "dino-mlops pipeline upload", "dino-mlops pipeline submit", "get hpa triton",
                    "dino-mlops deploy --recover", "dino-mlops pretrain --cluster"):
        assert command in text, command


def test_guide_names_the_tests_that_played_its_steps() -> None:
    text = GUIDE.read_text()
    for test in re.findall(r"`(tests/[\w/]+\.py)`", text):
        assert (REPO_ROOT / test).is_file(), test
