"""One definition per option: config.OPTIONS is what sweep()'s signature, the command line and the panel show."""

import inspect

import pytest

from torchao_nb import config, engine, modes
from torchao_nb.autoquant.settings import SearchSettings
from torchao_nb.cli import main
from torchao_nb.errors import UserError

FAKE = config.Option("fake_knob", 3, "a knob only this test has", "--fake-knob", int, label="fake knob")


def signature_lines() -> str:
    """What sweep() must write for the options, to paste into engine.py when an option changes."""
    return "\n".join(f"          {o.name}: {o.annotation()} = {o.default!r}," for o in config.OPTIONS)


def test_sweep_signature_is_the_options():
    params = list(inspect.signature(engine.sweep).parameters.values())
    first = [p.name for p in params].index(config.OPTIONS[0].name)
    written = params[first:-1]
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD  # a mode's settings, by the mode's name
    assert [p.name for p in written] == list(config.option_names()), signature_lines()
    for p, o in zip(written, config.OPTIONS):
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
        assert (p.default, p.annotation) == (o.default, o.annotation()), signature_lines()


def test_option_annotations_come_from_their_parser_and_default():
    by_name = {o.name: o for o in config.OPTIONS}
    assert by_name["threads"].annotation() == "int | None"
    assert by_name["compile"].annotation() == "bool" and by_name["isolate"].annotation() == "bool"
    assert by_name["tuning"].annotation() == "str | None"
    assert by_name["cell_timeout_s"].annotation() == "float"
    assert FAKE.annotation() == "int"


def test_a_new_option_appears_in_the_command_line_help_and_the_panel(monkeypatch, capsys):
    from torchao_nb.widgets import BenchmarkPanel

    monkeypatch.setattr(config, "OPTIONS", config.OPTIONS + (FAKE,))
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--fake-knob" in help_text and "a knob only this test has (default 3)" in help_text

    p = BenchmarkPanel(isolate=False)
    knob = p.controls["fake_knob"].widget
    assert knob is p.fake_knob and knob.description == "fake knob" and knob.value == "3"
    assert knob in descendants(p.widget)  # shown, under "more settings"
    assert p.choices.controls["fake_knob"].read() == 3
    knob.value = "7"
    assert p.sweep_kwargs()["fake_knob"] == 7
    assert config.split_options({"fake_knob": 7}) == ({"fake_knob": 7}, {})  # and sweep() takes it
    knob.value = "seven"
    with pytest.raises(UserError, match="fake knob must be a whole number, got 'seven'"):
        p.sweep_kwargs()


def descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from descendants(child)


@pytest.mark.parametrize("settings, name", [(SearchSettings, "autoquant"), (modes.Int4Settings, "int4 weight-only"),
                                            (modes.Float8Settings, "float8dynamic")])
def test_every_settings_type_takes_the_same_forms_with_the_same_messages(settings, name):
    assert settings.of(None) == settings() and settings.of(settings()) == settings()
    field = next(iter(settings.__dataclass_fields__))
    assert settings.of({field: getattr(settings(), field)}) == settings()
    with pytest.raises(UserError, match=rf"unknown {name} setting\(s\) nope; valid: {field}"):
        settings.of({"nope": 1})
    with pytest.raises(UserError, match=rf"{name} takes .*{settings.__name__} or a dict of its fields \({field}"):
        settings.of([1])
