"""The one container image every component runs in: name and tag are this single setting.

Built from the repository's Dockerfile; k8s/ manifests use the same name and tag (a test keeps
them equal). Override with DINO_IMAGE when compiling a pipeline for your own registry.
"""

import os

IMAGE = os.environ.get("DINO_IMAGE", "ghcr.io/dino-mlops/dino-mlops:0.1.0")
