"""One typed configuration tree for training and evaluation, built from YAML files and overrides.

Defaults are the official DINO code's (facebookresearch/dino, `main_dino.py`); packaged YAML files
under `dino_model/configs/` hold differences only (the paper's settings, the test and demo sizes).
One default differs: `train.precision` is `auto`, resolved by the trainer for its device: bf16 on
GPUs with native bf16 (no loss scaling, no fp16 overflow), fp16 with the gradient scaler on other
GPUs (the official `use_fp16=True`), bf16 on CPUs with bf16 units (AVX512-BF16, AMX), fp32 on other
CPUs. Checkpoints record the resolved value.
Struct mode rejects unknown keys and wrong types, so a misspelt override fails loudly instead of
being ignored. This module imports no torch so that pipelines can build configs cheaply.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from dino_model.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
ARCHS = ("vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd", "lars")
POS_INTERPOLATIONS = ("dino", "timm")
GLOBAL_POOLS = ("token", "avg")
DEVICES = ("auto", "cpu", "cuda")
INIT_PARTS = ("auto", "all", "backbone")
CROP_BACKENDS = ("pil", "gpu")

# Ranges of the values users set by hand; a value outside them fails at load time, naming the key,
# instead of deep inside PyTorch or, worse, training silently with it.
INT_MINIMUMS = {
    "data.num_workers": 0,
    "model.patch_size": 1,
    "model.img_size": 1,
    "model.out_dim": 2,  # the collapse rule compares the entropy with log(out_dim)
    "model.hidden_dim": 1,
    "model.bottleneck_dim": 1,
    "model.head_layers": 1,
    "crops.global_size": 1,
    "crops.local_size": 1,
    "crops.local_crops_number": 0,
    "loss.warmup_teacher_temp_epochs": 0,
    "optim.warmup_epochs": 0,
    "optim.freeze_last_layer_epochs": 0,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.seed": 0,  # numpy seeds must be non-negative
    "train.log_every_steps": 1,
    "train.saveckp_freq": 0,
    "train.stop_after_epochs": 0,
    "eval.image_size": 1,
    "eval.resize_size": 1,
    "eval.batch_size": 1,
    "eval.knn_chunk_size": 1,
}
OPTIONAL_POSITIVE_INTS = ("model.depth", "model.embed_dim", "model.num_heads")
FLOAT_MINIMUMS = {  # key: (minimum, strictly above it)
    "loss.student_temp": (0.0, True),
    "loss.teacher_temp": (0.0, True),
    "loss.warmup_teacher_temp": (0.0, True),
    "optim.base_lr": (0.0, True),
    "optim.min_lr": (0.0, False),
    "optim.weight_decay": (0.0, False),
    "optim.weight_decay_end": (0.0, False),
    "optim.clip_grad": (0.0, False),
    "eval.knn_temperature": (0.0, True),
}
FRACTIONS = {  # key: whether 1 itself is excluded
    "model.drop_path_rate": True,
    "crops.flip_p": False,
    "crops.color_jitter_p": False,
    "crops.solarize_p": False,
    "loss.center_momentum": False,
    "optim.momentum_teacher": False,
    "monitor.entropy_min_frac": False,
    "monitor.entropy_max_frac": False,
}


@dataclass
class DataConfig:
    root: str = "data/digits/train"  # image folder: class sub-folders, or flat when unlabelled
    # image folders trained on beside `root` (any layout, labels unused): the flywheel's captured images
    extra_roots: List[str] = field(default_factory=list)
    knn_train: str = ""  # labelled folder for the k-NN memory bank ("" = skip k-NN)
    knn_val: str = ""  # labelled folder that k-NN is scored on
    num_workers: int = 0
    version: str = ""  # DVC md5 of the data set; recorded in checkpoints and lineage
    revision: str = ""  # git commit of the data repository that records `version` ("" when unknown)


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
    # pil: crops built by the loader workers (PIL) | gpu: workers read file bytes, the training device
    # decodes and crops them (dino_model/data/gpu_crops.py; needs the gpu-aug extra, kornia)
    backend: str = "pil"


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
    # auto (CUDA: bf16 if native, else fp16; CPU: bf16 with bf16 units, else fp32) | fp32
    # | bf16 (CPU and CUDA autocast) | fp16 (CUDA, scaler)
    precision: str = "auto"
    seed: int = 0
    output_dir: str = "runs/dino"
    device: str = "auto"  # auto | cpu | cuda
    log_every_steps: int = 10
    saveckp_freq: int = 20  # extra numbered copy every N epochs; 0 = none (logged at the start), < 0 refused
    stop_after_epochs: int = 0  # stop early (schedules still span `epochs`); 0 = run all
    channels_last: bool = False
    compile: bool = False
    # CPU: malloc keeps freed memory for reuse (glibc) instead of page-faulting large tensors in anew
    # each step; the process keeps its peak memory (dino_model/runtime/cpu_memory.py)
    cpu_keep_freed_memory: bool = True
    allow_config_change: bool = False  # resume although optimisation settings differ from the checkpoint's
    # a new run (epoch 0, fresh optimiser and schedules) starting from these weights: a full checkpoint
    # (ours or official) or a backbone-only state dict; "" = random initialisation. Not --resume.
    init_weights: str = ""
    init_parts: str = "auto"  # auto (all when the file has student and teacher) | all | backbone (fresh heads)


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
        """Range and cross-field checks; raises ConfigError naming the key and what is allowed."""
        _choice("model.arch", self.model.arch, ARCHS)
        _choice("train.precision", self.train.precision, PRECISIONS)
        _choice("train.device", self.train.device, DEVICES)
        _choice("train.init_parts", self.train.init_parts, INIT_PARTS)
        _choice("optim.name", self.optim.name, OPTIMIZERS)
        _choice("model.pos_interpolation", self.model.pos_interpolation, POS_INTERPOLATIONS)
        _choice("model.global_pool", self.model.global_pool, GLOBAL_POOLS)
        _choice("crops.backend", self.crops.backend, CROP_BACKENDS)
        if self.crops.backend == "gpu" and importlib.util.find_spec("kornia") is None:
            raise ConfigError("crops.backend=gpu needs kornia, which is not installed: "
                              "pip install 'dino-mlops[gpu-aug]' (or use crops.backend=pil)")
        for key, minimum in INT_MINIMUMS.items():
            _at_least(key, self.get(key), minimum)
        for key in OPTIONAL_POSITIVE_INTS:
            if self.get(key) is not None:
                _at_least(key, self.get(key), 1)
        for key, (minimum, strict) in FLOAT_MINIMUMS.items():
            _above(key, self.get(key), minimum, strict=strict)
        for key, upper_open in FRACTIONS.items():
            _fraction(key, self.get(key), upper_open=upper_open)
        if any(not isinstance(k, int) or k < 1 for k in self.eval.knn_k) or not self.eval.knn_k:
            raise ConfigError(f"eval.knn_k={list(self.eval.knn_k)} must hold integers >= 1")
        self._check_consistency()

    def _check_consistency(self) -> None:
        m = self.model
        if m.embed_dim is not None and m.num_heads is not None and m.embed_dim % m.num_heads:
            raise ConfigError(f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads={m.num_heads}")
        if self.monitor.entropy_min_frac > self.monitor.entropy_max_frac:
            raise ConfigError(f"monitor.entropy_min_frac={self.monitor.entropy_min_frac} exceeds "
                              f"monitor.entropy_max_frac={self.monitor.entropy_max_frac}")
        if self.crops.local_crops_number > 0 and self.crops.local_size > self.crops.global_size:
            raise ConfigError(
                f"crops.local_size={self.crops.local_size} must not exceed "
                f"crops.global_size={self.crops.global_size}"
            )
        blur_lo, blur_hi = _pair("crops.blur_radius", self.crops.blur_radius)
        if not 0 <= blur_lo <= blur_hi:
            raise ConfigError(f"crops.blur_radius={[blur_lo, blur_hi]} must satisfy 0 <= min <= max")
        for key in ("global_scale", "local_scale"):
            lo, hi = _pair(f"crops.{key}", getattr(self.crops, key))
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"crops.{key}={[lo, hi]} must satisfy 0 < min <= max <= 1")
        if self.model.arch.startswith("vit") and self.crops.global_size % self.model.patch_size:
            raise ConfigError(
                f"crops.global_size={self.crops.global_size} is not a multiple of "
                f"model.patch_size={self.model.patch_size}"
            )
        if self.optim.warmup_epochs > self.train.epochs:
            raise ConfigError(
                f"optim.warmup_epochs={self.optim.warmup_epochs} exceeds train.epochs={self.train.epochs}"
            )
        if self.loss.warmup_teacher_temp_epochs > self.train.epochs:
            raise ConfigError(
                f"loss.warmup_teacher_temp_epochs={self.loss.warmup_teacher_temp_epochs} "
                f"exceeds train.epochs={self.train.epochs}"
            )

    def get(self, key: str) -> Any:
        """The value at a dotted key such as 'optim.base_lr'."""
        section, name = key.split(".")
        return getattr(getattr(self, section), name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{key}={value} must be an integer >= {minimum}")


def _above(key: str, value: float, minimum: float, *, strict: bool) -> None:
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ConfigError(f"{key}={value} must be a finite number {'>' if strict else '>='} {minimum:g}")


def _fraction(key: str, value: float, *, upper_open: bool) -> None:
    if not (0 <= value < 1 if upper_open else 0 <= value <= 1):
        raise ConfigError(f"{key}={value} must be in [0, 1{')' if upper_open else ']'}")


def _pair(key: str, values: Sequence[float]) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(f"{key}={list(values)} must hold two numbers [min, max]")
    return float(values[0]), float(values[1])


# Keys that may differ between a checkpoint and the run resuming it: where files go, how data is
# read, how progress is logged and evaluated. Every other key shapes the optimisation itself.
# The initial weights only matter at epoch 0: a resumed run ignores train.init_* and keeps the
# checkpoint's values, so its lineage still names the weights the run started from.
RESUME_MAY_CHANGE = (
    "data.root", "data.extra_roots", "data.knn_train", "data.knn_val", "data.num_workers", "data.revision",
    "train.output_dir", "train.device", "train.log_every_steps", "train.saveckp_freq", "train.stop_after_epochs",
    "train.channels_last", "train.compile", "train.allow_config_change", "train.init_weights", "train.init_parts",
    "monitor.", "eval.",
)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(saved: Mapping[str, Any], current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, current value)} for the settings a resumed run must keep.

    `saved` is a checkpoint's `config` dict; keys it lacks (written by an older version) count as
    their defaults.
    """
    old = {**flatten(TrainConfig().to_dict()), **flatten(saved)}
    new = flatten(current.to_dict())
    return {key: (old.get(key), value) for key, value in new.items()
            if old.get(key) != value and not key.startswith(RESUME_MAY_CHANGE)}


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(changes.items()))


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


def pipeline_config(name: str, yaml_text: str = "", overrides: Sequence[str] = ()) -> TrainConfig:
    """A pipeline run's config: `yaml_text` when given (pasted in the UI), else the packaged config `name`."""
    return load_config_text(yaml_text, overrides) if yaml_text.strip() else load_config(name, overrides=overrides)


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
