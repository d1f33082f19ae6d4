"""Every checked setting of every method rejects a bad value with one line naming it, before any
data is opened (a bad option must not cost a dataset decode first)."""

from __future__ import annotations

import dataclasses
import typing

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


def _wrong_type(tp) -> object:
    """A value of the wrong type for a field's annotation."""
    base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    text = str(base)
    if "Literal" in text:
        return None  # covered by the choices
    if "dict" in text:
        return 5
    if "tuple" in text:
        return "a"
    if base is bool:
        return 3
    if base in (int, float) or "int" in text or "float" in text:
        return "abc"
    if base is str or "str" in text:
        return 5
    return None


TYPE_CASES = [(m, m, name, bad) for m, cls in METHODS.items() for name, tp in field_hints(cls.Config).items()
              if (bad := _wrong_type(tp)) is not None]
TYPE_CASES += [("simclr", section, name, bad) for section, cls in SECTIONS.items()
               for name, tp in field_hints(cls).items() if (bad := _wrong_type(tp)) is not None]


@pytest.mark.parametrize(("method", "section", "name", "bad"), TYPE_CASES,
                         ids=[f"{s}.{n}={b}" for _, s, n, b in TYPE_CASES])
def test_a_value_of_the_wrong_type_is_one_line_before_any_data_is_opened(
        method, section, name, bad, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("selfsup.train.trainer.open_dataset", _no_data)
    code = main(["pretrain", "--method", method, "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--set", f"{section}.{name}={bad}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and f"{section}.{name}" in err


def _no_data(*args, **kwargs):
    raise AssertionError("a dataset was opened before the config was checked")


def test_every_field_of_every_section_is_covered():
    covered = {(s, n) for _, s, n, _ in CASES + TYPE_CASES}
    every = {(m, n) for m, cls in METHODS.items() for n in field_hints(cls.Config)}
    every |= {(s, n) for s, cls in SECTIONS.items() for n in field_hints(cls)}
    assert not every - covered


def test_views_recipe_choices_are_the_recipe_table():
    from selfsup.views.config import ViewsConfig
    from selfsup.views.recipes import RECIPES

    assert set(choices_of(field_hints(ViewsConfig)["recipe"])) == {"", *RECIPES}


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
