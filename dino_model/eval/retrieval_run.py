"""Image retrieval with a checkpoint end to end: frozen teacher CLS features, cosine ranking, mAP.

Two layouts. With a query folder, every query ranks the whole database folder and its positives are
the database images of the class with the same name. Without one, the database folder is searched
leave-one-out: every image queries all the others, and itself counts as junk (removed from its own
ranking), as the benchmark treats the query image. Classes come from sub-folder names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dino_model.config import EvalConfig
from dino_model.data.sources import labelled_classes
from dino_model.errors import DataError
from dino_model.eval.features import extract_features, labels_by_name
from dino_model.eval.report import build_report, metrics_table, write_report
from dino_model.eval.retrieval import rank_and_score
from dino_model.eval.search_settings import RetrievalConfig
from dino_model.eval.settings import checkpoint_config
from dino_model.models.loading import load_backbone

logger = logging.getLogger(__name__)


def run_retrieval_eval(checkpoint: str | Path, cfg: EvalConfig | None = None, *, database_dir: str | Path,
                       query_dir: str | Path | None = None, settings: RetrievalConfig | None = None,
                       output: str | Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Score the teacher backbone of `checkpoint` at retrieval; writes and returns the metrics report.

    cfg: image sizes and batch size; None: the checkpoint's saved `eval` config.
    """
    if not database_dir:
        raise DataError("retrieval needs a labelled database folder (--database-dir)")
    cfg = cfg or checkpoint_config(checkpoint).eval
    settings = settings or RetrievalConfig()
    backbone, _ = load_backbone(checkpoint)
    db_x, db_y = extract_features(backbone, database_dir, cfg, device=device)
    db_classes = labelled_classes(str(database_dir))
    if (db_y < 0).any():
        raise DataError(f"retrieval needs class sub-folders in {database_dir}")
    if query_dir:
        q_x, q_y = extract_features(backbone, query_dir, cfg, device=device)
        if (q_y < 0).any():
            raise DataError(f"retrieval needs class sub-folders in {query_dir}")
        q_y = labels_by_name(q_y, labelled_classes(str(query_dir)), db_classes)
    else:
        q_x, q_y = db_x, db_y
    scores = rank_and_score(q_x, q_y, db_x, db_y, ks=settings.recall_ks, leave_one_out=not query_dir,
                            chunk_size=settings.chunk_size)
    metrics = scores.summary("retrieval")
    details = {"mode": "queries" if query_dir else "leave_one_out", "classes": db_classes,
               "n_queries": len(q_y), "n_scored_queries": int(scores.valid.sum()), "n_database": len(db_y),
               "database_dir": str(database_dir), "query_dir": str(query_dir) if query_dir else None,
               "feature_dim": int(db_x.shape[1]), "image_size": cfg.image_size, "resize_size": cfg.resize_size,
               "recall_ks": list(scores.ks)}
    report = build_report("retrieval", checkpoint, metrics, details)
    out = Path(output) if output else Path(checkpoint).parent / "eval" / "retrieval.json"
    md = f"# Image retrieval\n\n{checkpoint}: mAP {metrics['retrieval_map']:.2f}% over {details['n_scored_queries']}"
    md += f" queries ({details['mode']})\n\n" + metrics_table(metrics)
    write_report(report, out, md)
    logger.info("retrieval mAP %.2f%% over %d queries", metrics["retrieval_map"], details["n_scored_queries"])
    return report | {"report_path": str(out)}
