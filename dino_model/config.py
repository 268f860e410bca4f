"""One typed configuration tree for training and evaluation, built from YAML files and overrides.

Defaults are the official DINO code's (facebookresearch/dino, `main_dino.py`); packaged YAML files
under `dino_model/configs/` hold differences only (the paper's settings, the test and demo sizes).
Struct mode rejects unknown keys and wrong types, so a misspelt override fails loudly instead of
being ignored. This module imports no torch so that pipelines can build configs cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from dino_model.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
ARCHS = ("vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "lars")
POS_INTERPOLATIONS = ("dino", "timm")
GLOBAL_POOLS = ("token", "avg")


@dataclass
class DataConfig:
    root: str = "data/digits/train"  # image folder: class sub-folders, or flat when unlabelled
    knn_train: str = ""  # labelled folder for the k-NN memory bank ("" = skip k-NN)
    knn_val: str = ""  # labelled folder that k-NN is scored on
    num_workers: int = 0
    version: str = ""  # DVC md5 of the data set; recorded in checkpoints and lineage


@dataclass
class ModelConfig:
    arch: str = "vit_small"  # vit_tiny | vit_small | vit_base | resnet18 | resnet50
    patch_size: int = 16
    img_size: int = 224  # resolution the position table is built for; others are interpolated
    depth: Optional[int] = None  # overrides of the arch's dimensions (tiny test models)
    embed_dim: Optional[int] = None
    num_heads: Optional[int] = None
    drop_path_rate: float = 0.1  # student only; the teacher has none
    pos_interpolation: str = "dino"  # dino: scale_factor (n+0.1)/sqrt(N), no antialias | timm
    global_pool: str = "token"  # ViT feature: token (the CLS token, as officially) | avg (mean patch token)
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    use_bn_in_head: bool = False
    norm_last_layer: bool = True  # the authors use False for vit_small, True for vit_base


@dataclass
class CropConfig:
    global_size: int = 224
    local_size: int = 96
    local_crops_number: int = 8
    global_scale: List[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: List[float] = field(default_factory=lambda: [0.05, 0.4])
    blur_radius: List[float] = field(default_factory=lambda: [0.1, 2.0])  # PIL radius range, for 224 px crops
    flip_p: float = 0.5  # horizontal flip; 0 for data whose mirror image is another class (digits, text)
    color_jitter_p: float = 0.8
    solarize_p: float = 0.2  # on the second global crop


@dataclass
class LossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # the paper's setting: 0.07 with a 30-epoch warm-up from 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars
    base_lr: float = 5e-4  # peak lr per 256 images; see effective_lr()
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04  # cosine to weight_decay_end
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996  # cosine to 1
    clip_grad: float = 3.0  # per-parameter gradient norm; 0 disables
    freeze_last_layer_epochs: int = 1


@dataclass
class RunConfig:
    epochs: int = 100
    batch_size: int = 64  # per process
    precision: str = "fp32"  # fp32 | bf16 (CPU and CUDA autocast) | fp16 (CUDA, grad scaler)
    seed: int = 0
    output_dir: str = "runs/dino"
    device: str = "auto"  # auto | cpu | cuda
    log_every_steps: int = 10
    saveckp_freq: int = 20  # extra numbered copy every N epochs
    stop_after_epochs: int = 0  # stop early (schedules still span `epochs`); 0 = run all
    channels_last: bool = False
    compile: bool = False


@dataclass
class MonitorConfig:
    entropy_min_frac: float = 0.01  # teacher entropy below this fraction of log(out_dim): collapse
    entropy_max_frac: float = 0.99  # above: uniform collapse


@dataclass
class EvalConfig:
    image_size: int = 224  # centre crop fed to the frozen backbone
    resize_size: int = 256
    batch_size: int = 128
    knn_k: List[int] = field(default_factory=lambda: [10, 20, 100, 200])
    knn_temperature: float = 0.07
    knn_chunk_size: int = 1024  # test images per similarity block; bounds memory


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Cross-field checks; raises ConfigError naming the keys."""
        _choice("model.arch", self.model.arch, ARCHS)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("optim.name", self.optim.name, OPTIMIZERS)
        _choice("model.pos_interpolation", self.model.pos_interpolation, POS_INTERPOLATIONS)
        _choice("model.global_pool", self.model.global_pool, GLOBAL_POOLS)
        if self.crops.local_crops_number > 0 and self.crops.local_size > self.crops.global_size:
            raise ConfigError(
                f"crops.local_size={self.crops.local_size} must not exceed "
                f"crops.global_size={self.crops.global_size}"
            )
        blur_lo, blur_hi = _pair("crops.blur_radius", self.crops.blur_radius)
        if not 0 <= blur_lo <= blur_hi:
            raise ConfigError(f"crops.blur_radius={[blur_lo, blur_hi]} must satisfy 0 <= min <= max")
        for key in ("flip_p", "color_jitter_p", "solarize_p"):
            if not 0 <= getattr(self.crops, key) <= 1:
                raise ConfigError(f"crops.{key}={getattr(self.crops, key)} must be a probability in [0, 1]")
        for key in ("global_scale", "local_scale"):
            lo, hi = _pair(f"crops.{key}", getattr(self.crops, key))
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"crops.{key}={[lo, hi]} must satisfy 0 < min <= max <= 1")
        if self.model.arch.startswith("vit") and self.crops.global_size % self.model.patch_size:
            raise ConfigError(
                f"crops.global_size={self.crops.global_size} is not a multiple of "
                f"model.patch_size={self.model.patch_size}"
            )
        positive = {
            "train.epochs": self.train.epochs,
            "train.batch_size": self.train.batch_size,
            "model.out_dim": self.model.out_dim,
            "loss.teacher_temp": self.loss.teacher_temp,
            "loss.student_temp": self.loss.student_temp,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key}={value} must be positive")
        if self.optim.warmup_epochs > self.train.epochs:
            raise ConfigError(
                f"optim.warmup_epochs={self.optim.warmup_epochs} exceeds train.epochs={self.train.epochs}"
            )
        if self.loss.warmup_teacher_temp_epochs > self.train.epochs:
            raise ConfigError(
                f"loss.warmup_teacher_temp_epochs={self.loss.warmup_teacher_temp_epochs} "
                f"exceeds train.epochs={self.train.epochs}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _pair(key: str, values: Sequence[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(f"{key}={list(values)} must hold two numbers [min, max]")
    return float(values[0]), float(values[1])


def packaged_config(name: str) -> Path:
    """Path of a YAML file shipped in dino_model/configs (name with or without .yaml)."""
    stem = name.removesuffix(".yaml")
    path = CONFIG_DIR / f"{stem}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"no config file {name!r} and no packaged config of that name; packaged: {known}")
    return path


def resolve_config_path(name: str | Path) -> Path:
    """A YAML path as given, or a packaged config name such as 'tiny'."""
    path = Path(name)
    return path if path.is_file() else packaged_config(str(name))


def load_config(*files: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Merge the defaults, YAML files (later wins) and `a.b=value` overrides into a TrainConfig."""
    from omegaconf import OmegaConf

    texts = [resolve_config_path(f).read_text() for f in files]
    return _merge(texts, overrides, OmegaConf)


def load_config_text(yaml_text: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """Like load_config, for a YAML document received as a string (pipeline components)."""
    from omegaconf import OmegaConf

    return _merge([yaml_text], overrides, OmegaConf)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from `to_dict()` output (as stored in checkpoints)."""
    from omegaconf import OmegaConf

    return _merge([OmegaConf.to_yaml(OmegaConf.create(values))], (), OmegaConf)


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    from omegaconf import OmegaConf

    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _merge(texts: Sequence[str], overrides: Sequence[str], omegaconf: Any) -> TrainConfig:
    from omegaconf.errors import OmegaConfBaseException

    try:
        layers = [omegaconf.create(t) if t.strip() else omegaconf.create({}) for t in texts]
        merged = omegaconf.merge(
            omegaconf.structured(TrainConfig), *layers, omegaconf.from_dotlist(list(overrides))
        )
        cfg = omegaconf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from None
    cfg.validate()
    return cfg


def _describe(exc: Exception) -> str:
    message = str(exc).splitlines()[0]
    key = getattr(exc, "full_key", None)
    return f"bad configuration key {key!r}: {message}" if key else f"bad configuration: {message}"
