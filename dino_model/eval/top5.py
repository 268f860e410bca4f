"""When an evaluation reports top-5 accuracy: one rule for the k-NN and the linear probe.

With 5 or fewer classes the five best guesses hold every class: the linear probe's top-5 is then
100% by construction and the k-NN's only says whether some neighbour voted for the true class;
neither measures a ranking. Both evaluations therefore leave top-5 out of their results (metrics,
history, reports, logs) below 6 classes. The official scripts always rank ImageNet's 1,000
classes and never meet the case.
"""

from __future__ import annotations

TOP5_MIN_CLASSES = 6  # top-5 is reported only when the data set has more than 5 classes


def reports_top5(n_classes: int) -> bool:
    """Whether a data set of `n_classes` classes gets a top-5 accuracy."""
    return n_classes >= TOP5_MIN_CLASSES
