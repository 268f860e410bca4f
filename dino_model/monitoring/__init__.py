"""Monitoring: platform metrics pushed to a Pushgateway, the rules and dashboard, a local Prometheus.

rules.yml is the one source of the alerting and recording rules; k8s.py renders it (and
dashboard.json) into the Kubernetes manifests. Heavy or optional parts stay in their modules.
"""

from dino_model.monitoring.metrics import (
    push_eval_metrics,
    push_training_metrics,
    record_data_version,
    record_deployment,
)

__all__ = ["push_eval_metrics", "push_training_metrics", "record_data_version", "record_deployment"]
