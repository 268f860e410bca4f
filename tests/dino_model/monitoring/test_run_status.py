"""A run's final status and its steps' metrics at a real Pushgateway, as the pipeline's uncached steps push them."""

from __future__ import annotations

from dino_model.monitoring.metrics import push_step_metrics
from dino_model.monitoring.run_status import record_run_status, status_markdown


def _series(groups: list[dict], name: str) -> list[tuple[dict, float]]:
    return [(m["labels"], float(m["value"])) for g in groups if name in g
            for m in g[name]["metrics"]]


def test_a_failure_then_a_success_replace_one_group_per_pipeline(prometheus_bins, port_factory, tmp_path):
    from dino_model.monitoring.prometheus import run_pushgateway
    from dino_model.monitoring.pushgateway import gateway_groups

    with run_pushgateway(port=port_factory(), log_dir=tmp_path) as url:
        gateway = url.removeprefix("http://")
        assert record_run_status("dino-training", "run-1", "FAILED", gateway=gateway, finished_at=100.0)
        (labels, value), = _series(gateway_groups(url), "dino_pipeline_run_succeeded")
        assert (labels["pipeline"], labels["job"], value) == ("dino-training", "dino-pipeline", 0.0)
        assert record_run_status("dino-training", "run-2", "SUCCEEDED", gateway=gateway, finished_at=200.0)
        groups = gateway_groups(url)
        assert [v for _, v in _series(groups, "dino_pipeline_run_succeeded")] == [1.0]
        (info, _), = _series(groups, "dino_pipeline_run_info")
        assert (info["run"], info["state"]) == ("run-2", "SUCCEEDED")  # the failed run's group was replaced

        assert push_step_metrics("train", {"loss": 2.5, "epoch": 3, "note": "x", "flag": True}, gateway=gateway,
                                 run="run-2")
        assert push_step_metrics("knn", {"knn_top1": 61.0}, gateway=gateway, run="run-2")
        groups = gateway_groups(url)
        (loss_labels, loss), = _series(groups, "dino_train_loss")
        assert (loss_labels["run"], loss_labels["job"], loss) == ("run-2", "dino-train", 2.5)
        evals = _series(groups, "dino_eval_metric")
        assert any(labels["run"] == "run-2" and labels["evaluation"] == "knn" and value == 61.0
                   for labels, value in evals)


def test_an_unreachable_gateway_is_reported_not_raised(port_factory):
    assert not record_run_status("dino-training", "run-1", "FAILED", gateway=f"127.0.0.1:{port_factory()}")
    assert not push_step_metrics("knn", {"knn_top1": 1.0}, gateway="", run="r")


def test_the_summary_page_names_the_run_state_and_error():
    page = status_markdown("dino-training", "run-7", "FAILED", error="pretrain: out of memory", details={"job": "j"})
    assert page.startswith("# dino-training: failed\n")
    assert "`run-7`" in page and "**FAILED**" in page and "out of memory" in page and "- job: j" in page
