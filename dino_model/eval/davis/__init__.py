"""DAVIS video object segmentation by label propagation with frozen features (Caron et al., ICCV 2021, Sec. 4.2.2).

Modules: `io` (the DAVIS layout and palette PNGs), `frames` (pre-processing), `features` (patch
features), `propagation`, `metrics` (J and F), `statistics` (mean / recall / decay), `evaluation`
(scoring a results folder), `synthetic` (a generated test sequence) and `run` (the command).
"""
