"""Config: presets, overrides, and one-line errors that name the bad key or value."""

from pathlib import Path

import pytest

from selfsup.config import ConfigError, build_config, find_config, load_yaml, merge, parse_overrides, preset_names
from selfsup.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_and_round_trips(preset):
    cfg = build_config(load_yaml(find_config(preset)), METHODS)
    again = build_config(cfg.to_dict(), METHODS)
    assert again.to_dict() == cfg.to_dict()


def test_overrides_are_typed_and_merged():
    raw = merge(load_yaml(find_config("cifar10/simclr")),
                parse_overrides(["optim.lr=0.25", "train.epochs=3", "simclr.temperature=0.2",
                                 "views.scale=[0.3, 1]", "data.load_size=null", "optim.weight_decay=1e-6"]))
    cfg = build_config(raw, METHODS)
    assert cfg.optim.lr == 0.25 and cfg.train.epochs == 3 and cfg.params.temperature == 0.2
    assert cfg.optim.weight_decay == 1e-6  # YAML 1.1 reads "1e-6" as a string; still a number
    assert cfg.views.scale == (0.3, 1.0) and cfg.data.load_size is None
    assert cfg.backbone.cifar_stem is True  # untouched preset value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"method": "simclrr"}, "unknown method 'simclrr' (did you mean 'simclr'?)"),
        ({"optim": {"lrr": 0.1}}, "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
        ({"trian": {}}, "unknown config key 'trian' (did you mean 'train'?)"),
        ({"simclr": {"temprature": 0.1}}, "unknown config key 'simclr.temprature' (did you mean 'temperature'?)"),
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer, got 'ten'"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a number, got 'fast'"),
        ({"train": {"channels_last": 1}}, "train.channels_last: expected true/false, got 1"),
        ({"views": {"scale": [0.2]}}, "views.scale: expected 2 values, got [0.2]"),
        ({"optim": {"name": "adam"}}, "optim.name: 'adam' is not one of sgd, lars, adamw"),
        ({"method": "byol", "simclr": {}}, "config section 'simclr' belongs to method 'simclr', but method is 'byol'"),
        ({"train": {"batch_size": 10, "accum_steps": 3}}, "not divisible"),
        ({"views": {"scale": [0.5, 0.2]}}, "views.scale must satisfy"),
    ],
)
def test_bad_config_gives_one_line_error(raw, message):
    with pytest.raises(ConfigError) as e:
        build_config(raw, METHODS)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(tmp_path / "bad.yaml")
