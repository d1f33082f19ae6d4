"""Typed configuration: dataclasses, YAML presets, ``key=value`` overrides, clear errors.

A pre-training run is described by one :class:`PretrainConfig`. Its YAML form has one
section per dataclass (``backbone``, ``data``, ``views``, ``optim``, ``train``) plus one
section named after the method holding that method's own dataclass (e.g. ``simclr:``).
Unknown keys are rejected with the closest valid name; values are checked against the
field's type, its choices (``Literal``) and its range (``selfsup.core.checks``), and the
method's own checks run too, all before any data is opened. The method table is handed in
by the caller (``build_config(raw, METHODS)``): this module sits below the trainer and knows
no method.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml

from selfsup.core.checks import (
    Checked,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Range,
    UnitInterval,
    check_choice,
    choices_of,
    field_hints,
)
from selfsup.core.errors import ConfigError
from selfsup.data.decode import DEFAULT_MAX_PIXELS
from selfsup.models.backbones import BackboneConfig
from selfsup.views.config import ViewsConfig


@dataclass
class DataConfig(Checked):
    """Where the images come from (see ``selfsup.data.open_dataset``).

    max_images / max_test_images: use a fixed random subset of that many images (0 = all).
    max_image_pixels: larger image files (width x height once upright) are skipped and counted
    with a warning naming one: PIL's decompression-bomb guard, as a setting (default PIL's,
    about 13,400 x 13,400).
    sliding_window: [size, stride] in images: PIC's sliding-window order instead of a fresh
    shuffle per epoch (``selfsup.data.order.sliding_window_order``); null: epoch order.
    masks: a folder (or archive) of saliency masks named like the training images
    (``selfsup.data.masks``; MaskContrast); skip_missing: leave out (and count) the images
    without a usable mask instead of stopping with an error naming the first.
    decode: where a STREAMED split (one over ``memory_limit_gb``) is decoded: ``cpu``, by PIL in
    the ``num_workers`` processes; ``device``, the workers only read the files (into pinned
    memory on a GPU) and the JPEGs are decoded in batches on the training device (nvJPEG on
    CUDA; ``selfsup.data.jpeg``), other formats still by PIL.
    """

    section: ClassVar[str] = "data"

    path: str = ""
    max_images: NonNegativeInt = 0
    max_test_images: NonNegativeInt = 0
    load_size: PositiveInt | None = None
    memory_limit_gb: NonNegative = 8.0
    num_workers: NonNegativeInt = 4
    sliding_window: tuple[PositiveInt, PositiveInt] | None = None
    max_image_pixels: PositiveInt = DEFAULT_MAX_PIXELS
    masks: str = ""
    skip_missing: bool = False
    decode: Literal["cpu", "device"] = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sliding_window is not None and not self.sliding_window[1] <= self.sliding_window[0]:
            raise ConfigError(f"data.sliding_window must be [size, stride] with 0 < stride <= size, "
                              f"got {list(self.sliding_window)}")


@dataclass
class OptimConfig(Checked):
    """Optimiser and per-step schedules.

    lr is the absolute peak learning rate for the configured global batch size; it is reached
    after ``warmup_epochs`` of linear warm-up from ``warmup_start_factor * lr``, then follows
    ``schedule``: ``cosine`` down to ``min_lr``, ``poly`` (``min_lr + (lr - min_lr)(1 - t)^power``,
    ``poly_power`` 0.9 as DeepLab / MaskContrast) or ``constant``.
    Weight decay skips norms, biases and whatever the backbone's ``no_weight_decay()`` names (a
    timm ViT's position embedding and CLS token); with ``weight_decay_end`` it follows a cosine
    from ``weight_decay`` to that value per step (DINO's ViT recipe: 0.04 -> 0.4), else it stays
    constant. ``layer_decay`` < 1: layer-wise learning-rate decay (BEiT / MAE fine-tuning): the
    backbone's layer i of L gets ``lr * layer_decay^(L + 1 - i)``, the heads the full lr.
    ``lars_clip``: LARS in LARC's clipping mode (``trust_coefficient`` caps each layer's relative
    step instead of scaling it; see :class:`selfsup.train.optim.LARS`).
    ``fused``: torch's fused SGD / AdamW kernels (one kernel over all parameters instead of a
    few per parameter); ``auto``: on where the weights are on a CUDA device, off on the CPU;
    ``true`` on the CPU uses torch's fused CPU kernels; LARS has none (``true`` is an error).
    """

    section: ClassVar[str] = "optim"

    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: Positive = 0.3
    weight_decay: NonNegative = 1e-6
    weight_decay_end: NonNegative | None = None
    momentum: UnitInterval = 0.9
    betas: tuple[Annotated[float, Range(ge=0, lt=1)], Annotated[float, Range(ge=0, lt=1)]] = (0.9, 0.999)
    trust_coefficient: Positive = 0.001
    lars_clip: bool = False
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    poly_power: Positive = 0.9
    warmup_epochs: NonNegative = 10.0
    warmup_start_factor: UnitInterval = 0.0
    min_lr: NonNegative = 0.0
    grad_clip: NonNegative = 0.0
    layer_decay: Annotated[float, Range(gt=0, le=1)] = 1.0
    fused: Literal["auto", True, False] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fused is True and self.name == "lars":
            raise ConfigError("optim.fused=true: torch has no fused LARS; use optim.fused: auto or false")


@dataclass
class TrainConfig(Checked):
    """The training loop. ``batch_size`` is the GLOBAL batch over all ranks and
    accumulation steps; each step sees batch_size / (world_size * accum_steps) images per
    rank per forward pass. ``checkpoint_every`` (steps) and ``checkpoint_minutes`` (wall time,
    decided at log steps) add checkpoints within an epoch (0: off); every epoch ends with one;
    ``--resume`` continues from any of them exactly (data order, random streams, optimiser,
    schedules, EMA targets, queues, memory banks). ``log_every``: also how often the loss is
    checked for NaN / inf (one host-device sync per log interval). ``dtype``: the precision of
    the weights; ``float64`` (no AMP) is for
    exact comparisons, e.g. the golden trajectories of the tests, where float32 round-off,
    amplified by batch norm over a few images, would differ between CPUs. ``log``: ``tensorboard``
    also writes the records as TensorBoard scalars into the run folder (``selfsup.train.sinks``).
    ``compile``: the method's forward through ``torch.compile``; where compiling fails, one line
    says why and the run continues eager (``selfsup.train.compiled``). ``channels_last``: the
    weights and views in channels-last memory layout (faster convolutions on GPUs with tensor
    cores); ``amp``: autocast, ``auto`` = bf16 on CUDA GPUs that have it (fp16 with loss
    scaling on older ones), off on the CPU."""

    section: ClassVar[str] = "train"

    epochs: PositiveInt = 100
    batch_size: PositiveInt = 256
    accum_steps: PositiveInt = 1
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    out_dir: str = "runs/run"
    log_every: PositiveInt = 10
    checkpoint_every: NonNegativeInt = 0
    checkpoint_minutes: NonNegative = 15.0
    knn_every: NonNegativeInt = 1
    knn_k: PositiveInt = 200
    knn_temperature: Positive = 0.1
    knn_max_train: NonNegativeInt = 10000
    knn_max_test: NonNegativeInt = 2000
    eval_batch_size: PositiveInt = 512
    progress: bool = True
    log: Literal["jsonl", "tensorboard"] = "jsonl"  # metrics.jsonl always; tensorboard: event files beside it

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ConfigError(f"train.device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"train.batch_size {self.batch_size} is not divisible by train.accum_steps "
                              f"{self.accum_steps}")
        if self.dtype == "float64" and self.amp in ("bf16", "fp16"):
            raise ConfigError(f"train.amp={self.amp} cannot be combined with train.dtype=float64; use amp: off")


@dataclass
class PretrainConfig:
    """Everything that defines a pre-training run."""

    method: str = "simclr"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    params: Any = None  # the method's own dataclass, filled by ``build_config``

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML / checkpoint friendly); the method section under its name."""
        out = {
            f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "params"
        }
        out[self.method] = _plain(self.params)
        return out


SECTIONS = ("backbone", "data", "views", "optim", "train")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(options)})"


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp`` (ranges are checked by the
    dataclass itself, see ``selfsup.core.checks.Checked``)."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    choices = choices_of(tp)
    if choices is not None:
        check_choice(where, value, choices)
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        item_types = args if origin is tuple and args and args[-1] is not Ellipsis else [args[0]] * len(value)
        items = [_convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types, strict=True))]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a mapping of names to values, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot ("1e-6") as strings
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def build_dataclass(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    """Instantiate ``cls`` from a dict, rejecting unknown keys and wrong types."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = field_hints(cls)
    names = list(hints)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{where}.{key}'{_suggest(key, names)}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "train.epochs=5"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form section.key=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset; missing file or bad YAML is a one-line ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


PRESETS = Path(__file__).parent / "presets"  # package data: <dataset>/<method>.yaml


def preset_names() -> list[str]:
    """Every shipped preset, as ``<dataset>/<method>`` (``selfsup presets`` prints them)."""
    return sorted(p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.glob("*/*.yaml"))


def find_config(spec: str | Path) -> Path:
    """A ``--config`` value as a file: an existing path, else a preset name (``cifar10/simclr``,
    also ``cifar10/simclr.yaml`` or the checkout path ``configs/cifar10/simclr.yaml``)."""
    path = Path(spec)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removeprefix("configs/")
    if (PRESETS / f"{name}.yaml").is_file():
        return PRESETS / f"{name}.yaml"
    close = difflib.get_close_matches(name, preset_names(), n=1)
    hint = f" (did you mean the preset {close[0]!r}?)" if close else " (`selfsup presets` lists the presets)"
    raise ConfigError(f"config not found: {spec} is neither a file nor a preset{hint}")


def build_config(raw: dict[str, Any], methods: Mapping[str, Any]) -> PretrainConfig:
    """Build and validate a PretrainConfig from a nested dict (preset merged with overrides).

    methods: the method table (``selfsup.methods.METHODS``: name -> class with a ``Config``
    dataclass and a ``check_config(cfg)`` classmethod for checks across sections). Every
    check runs here, before any data is opened.
    """
    method = raw.get("method", "simclr")
    if method not in methods:
        raise ConfigError(f"unknown method {method!r}{_suggest(str(method), list(methods))}")
    top = [*SECTIONS, "method", method]
    for key in raw:
        if key not in top:
            if key in methods:
                raise ConfigError(f"config section '{key}' belongs to method {key!r}, but method is {method!r}")
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, top)}")
    defaults = PretrainConfig()
    cfg = PretrainConfig(
        method=method,
        **{s: build_dataclass(type(getattr(defaults, s)), raw.get(s), s) for s in SECTIONS},
        params=build_dataclass(methods[method].Config, raw.get(method), method),
    )
    methods[method].check_config(cfg)
    return cfg
