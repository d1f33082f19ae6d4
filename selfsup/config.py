"""Typed configuration: dataclasses, YAML presets, ``key=value`` overrides, clear errors.

A pre-training run is described by one :class:`PretrainConfig`. Its YAML form has one
section per dataclass (``backbone``, ``data``, ``views``, ``optim``, ``train``) plus one
section named after the method holding that method's own dataclass (e.g. ``simclr:``).
Unknown keys are rejected with the closest valid name; values are checked against the
field's type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.models.backbones import BackboneConfig
from selfsup.views.recipes import IMAGENET_MEAN, IMAGENET_STD


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line naming it."""


@dataclass
class DataConfig:
    """Where the images come from (see ``selfsup.data.open_dataset``).

    max_images / max_test_images: use a fixed random subset of that many images (0 = all).
    sliding_window: [size, stride] in images: PIC's sliding-window order instead of a fresh
    shuffle per epoch (``selfsup.data.order.sliding_window_order``); null: epoch order.
    """

    path: str = ""
    max_images: int = 0
    max_test_images: int = 0
    load_size: int | None = None
    memory_limit_gb: float = 8.0
    num_workers: int = 4
    sliding_window: tuple[int, int] | None = None


@dataclass
class ViewsConfig:
    """Augmented views. ``recipe`` empty means the method's own recipe.

    Multi-crop (SwAV, DINO): ``local_crops`` extra low-resolution views of ``local_size``
    pixels with crop area in ``local_scale``, photometrically like the recipe's last view;
    ``size`` and ``scale`` then describe the global views.

    Crop sampler (``selfsup.views.contrastive_crop``), for every view of any method:
    ``crop`` is ``random`` (random-resized crop), ``contrastive`` (ContrastiveCrop: crops
    placed around a per-image object box with Beta(``crop_alpha``, ``crop_alpha``) offsets;
    boxes from the encoder's heat map thresholded at ``crop_threshold``, plain random crops
    for ``crop_warmup_epochs`` epochs, boxes recomputed every ``crop_interval`` epochs) or
    ``fixed-center`` (the centred crop of area fraction max(scale), no randomness).
    """

    recipe: str = ""
    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    blur: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    local_crops: int = 0
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    crop: str = "random"
    crop_alpha: float = 0.6
    crop_threshold: float = 0.1
    crop_warmup_epochs: int = 100
    crop_interval: int = 100


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine per step).

    lr is the absolute peak learning rate for the configured global batch size.
    Norm and bias parameters never get weight decay (nor LARS adaptation). ``lars_clip``:
    LARS in LARC's clipping mode (``trust_coefficient`` caps each layer's relative step
    instead of scaling it; see :class:`selfsup.train.optim.LARS`).
    """

    name: str = "sgd"
    lr: float = 0.3
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    trust_coefficient: float = 0.001
    lars_clip: bool = False
    warmup_epochs: float = 10.0
    warmup_start_factor: float = 0.0
    min_lr: float = 0.0
    grad_clip: float = 0.0


@dataclass
class TrainConfig:
    """The training loop. ``batch_size`` is the GLOBAL batch over all ranks and
    accumulation steps; each step sees batch_size / (world_size * accum_steps) images per
    rank per forward pass. ``dtype``: the precision of the weights; ``float64`` (no AMP) is for
    exact comparisons, e.g. the golden trajectories of the tests, where float32 round-off,
    amplified by batch norm over a few images, would differ between CPUs."""

    epochs: int = 100
    batch_size: int = 256
    accum_steps: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    dtype: str = "float32"
    channels_last: bool = True
    sync_bn: bool = False
    out_dir: str = "runs/run"
    log_every: int = 10
    knn_every: int = 1
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_max_train: int = 10000
    knn_max_test: int = 2000
    eval_batch_size: int = 512
    progress: bool = True


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
ALLOWED_CHOICES = {
    ("optim", "name"): ("sgd", "lars", "adamw"),
    ("train", "amp"): ("auto", "bf16", "fp16", "off"),
    ("train", "dtype"): ("float32", "float64"),
    ("views", "crop"): ("random", "contrastive", "fixed-center"),
}


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(options)})"


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp``."""
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
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{where}.{key}'{_suggest(key, names)}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
        choices = ALLOWED_CHOICES.get((where, key))
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{where}.{key}: {kwargs[key]!r} is not one of {', '.join(choices)}")
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


def build_config(raw: dict[str, Any]) -> PretrainConfig:
    """Build and validate a PretrainConfig from a nested dict (preset merged with overrides)."""
    from selfsup.methods import METHODS

    method = raw.get("method", "simclr")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}{_suggest(str(method), list(METHODS))}")
    top = [*SECTIONS, "method", method]
    for key in raw:
        if key not in top:
            if key in METHODS:
                raise ConfigError(f"config section '{key}' belongs to method {key!r}, but method is {method!r}")
            raise ConfigError(f"unknown config key '{key}'{_suggest(key, top)}")
    cfg = PretrainConfig(
        method=method,
        **{s: build_dataclass(type(getattr(PretrainConfig(), s)), raw.get(s), s) for s in SECTIONS},
        params=build_dataclass(METHODS[method].Config, raw.get(method), method),
    )
    validate(cfg)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    """Cross-field checks that a type check cannot express."""
    t = cfg.train
    for name in ("epochs", "batch_size", "accum_steps"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.dtype == "float64" and t.amp in ("bf16", "fp16"):
        raise ConfigError(f"train.amp={t.amp} cannot be combined with train.dtype=float64; use amp: off")
    if t.batch_size % t.accum_steps:
        raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by train.accum_steps {t.accum_steps}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.data.sliding_window is not None and not 0 < cfg.data.sliding_window[1] <= cfg.data.sliding_window[0]:
        raise ConfigError(f"data.sliding_window must be [size, stride] with 0 < stride <= size, "
                          f"got {list(cfg.data.sliding_window)}")
    if cfg.views.size < 8:
        raise ConfigError(f"views.size must be >= 8 pixels, got {cfg.views.size}")
    lo, hi = cfg.views.scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"views.scale must satisfy 0 < min <= max <= 1, got {list(cfg.views.scale)}")
    v = cfg.views
    if v.crop_alpha <= 0:
        raise ConfigError(f"views.crop_alpha must be > 0, got {v.crop_alpha}")
    if not 0 <= v.crop_threshold < 1:
        raise ConfigError(f"views.crop_threshold must be in [0, 1), got {v.crop_threshold}")
    if v.crop_warmup_epochs < 0 or v.crop_interval < 1:
        raise ConfigError(f"views.crop_warmup_epochs must be >= 0 and views.crop_interval >= 1, "
                          f"got {v.crop_warmup_epochs} and {v.crop_interval}")
