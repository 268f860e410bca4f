"""Monitoring: platform metrics pushed to a Pushgateway, the rules and dashboard, a local Prometheus.

rules.yml is the one source of the alerting and recording rules; k8s.py renders it (and
dashboard.json) into the Kubernetes manifests. Heavy or optional parts stay in their modules, and
the pushing helpers below are imported on first use: the drift statistic (drift.py, numpy only)
must import in the client-only install, which has no prometheus-client.
"""

from importlib import import_module
from typing import Any

__all__ = ["push_eval_metrics", "push_training_metrics", "record_data_version", "record_deployment",
           "record_retraining"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("dino_model.monitoring.metrics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
