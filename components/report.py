"""Reporting components: the run's metrics at the Pushgateway, and how the run ended.

Both never cache and take the run id; the steps whose results they report may be cached (reused from
an earlier run), which is why those steps push nothing labelled with a run themselves.
"""

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def push_run_metrics(metrics: Input[Metrics], kind: str, pushgateway: str, run_id: str) -> None:
    """Push a step's `metrics` to the Pushgateway `pushgateway`, labelled run=`run_id`.

    `kind` is "train" (job dino-train) or the evaluation's name (job dino-eval, evaluation=`kind`). A
    configured gateway that does not take them fails the step, which KFP then retries with backoff.
    """
    from dino_model.monitoring.metrics import push_step_metrics

    if not push_step_metrics(kind, metrics.metadata, gateway=pushgateway, run=run_id) and pushgateway:
        raise RuntimeError(f"the Pushgateway at {pushgateway} did not take the {kind} metrics of run {run_id}")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def report_run_status(status: dsl.PipelineTaskFinalStatus, pipeline: str, run_id: str, pushgateway: str,
                      summary: Output[Markdown]) -> None:
    """The exit handler: push how run `run_id` ended (DinoPipelineRunFailed reads it) and write its summary page."""
    from pathlib import Path

    from dino_model.monitoring.run_status import record_run_status, status_markdown

    record_run_status(pipeline, run_id, status.state, gateway=pushgateway)
    job = status.pipeline_job_resource_name or ""
    page = status_markdown(pipeline, run_id, status.state, error=status.error_message or "",
                           details={"job": job} if job else None)
    Path(summary.path).write_text(page)
