"""Every checked setting of every method rejects a bad value with one line naming it, before any
data is opened (a bad option must not cost a dataset decode first)."""

from __future__ import annotations

import dataclasses

import pytest

from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.core.checks import choices_of, field_hints, ranges_of
from selfsup.methods import METHODS


def _bad_values(tp) -> list[object]:
    """Values outside a field's declared choices or range (empty when it declares neither)."""
    choices = choices_of(tp)
    if choices is not None:
        return [99 if all(isinstance(c, int) for c in choices) else "bogus"]
    bad = []
    for r in ranges_of(tp):
        bad += [v for v in (r.gt, None if r.ge is None else r.ge - 1, None if r.le is None else r.le + 1, r.lt)
                if v is not None]
    return bad


def _checked_fields(cls: type) -> list[tuple[str, object]]:
    return [(name, bad) for name, tp in field_hints(cls).items() for bad in _bad_values(tp)]


SECTIONS = {f.name: type(getattr(PretrainConfig(), f.name)) for f in dataclasses.fields(PretrainConfig)
            if f.name not in ("method", "params")}
CASES = [(m, m, name, bad) for m, cls in METHODS.items() for name, bad in _checked_fields(cls.Config)]
CASES += [("simclr", section, name, bad) for section, cls in SECTIONS.items() for name, bad in _checked_fields(cls)]


def test_every_method_declares_checked_settings():
    assert {m for m, *_ in CASES} == set(METHODS)


@pytest.mark.parametrize(("method", "section", "name", "bad"), CASES,
                         ids=[f"{s}.{n}={b}" for _, s, n, b in CASES])
def test_a_bad_value_is_one_line_before_any_data_is_opened(method, section, name, bad, tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("a dataset was opened before the config was checked")

    monkeypatch.setattr("selfsup.train.trainer.open_dataset", no_data)
    value = str(bad).lower() if isinstance(bad, bool) else bad
    code = main(["pretrain", "--method", method, "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--set", f"{section}.{name}={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err
    assert f"{section}.{name}" in err and str(bad) in err
