"""Kubeflow Pipelines built from the project's components."""
