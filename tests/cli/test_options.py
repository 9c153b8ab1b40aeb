"""Every option of every sub-command, given a bad value: one line naming the option, exit 2, no work.

The cases are generated from the parsers: each option that takes a value has ``choices`` or a check
from :mod:`keypatch.cli.values` with examples of values it refuses, so a new option is covered
without editing this file (and one with neither fails here).
"""

from __future__ import annotations

import argparse

import pytest

from keypatch.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its words (``"propose"``, ``"experiment compare"``), nested ones included."""
    parser = parser or build_parser()
    out = {}
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for name, p in sub.choices.items():
            words = f"{prefix}{name}"
            nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
            out.update(_commands(p, words + " ") if nested else {words: p})
    return out


def _valued(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.nargs != 0 and not isinstance(a, (argparse._HelpAction,
                                                                            argparse._VersionAction))]


def _name(a: argparse.Action) -> str:
    return a.option_strings[-1] if a.option_strings else a.dest


def _bad(a: argparse.Action) -> list[str]:
    if getattr(a.type, "bad", None):
        return list(a.type.bad)
    if a.choices is not None:
        return ["no-such-choice"]
    return []


CASES = [(cmd, _name(a), bad) for cmd, p in _commands().items() for a in _valued(p) for bad in _bad(a) or ["?"]]


def test_every_option_with_a_value_is_checked():
    unchecked = [f"{cmd} {_name(a)}" for cmd, p in _commands().items() for a in _valued(p) if not _bad(a)]
    assert unchecked == [], "options without choices or a check from keypatch.cli.values"


@pytest.fixture
def places(tmp_path):
    (tmp_path / "file.jpg").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    return {"file": str(tmp_path / "file.jpg"), "dir": str(tmp_path / "dir"), "missing": str(tmp_path / "missing")}


def _good(a: argparse.Action, places: dict[str, str]) -> list[str]:
    if getattr(a.type, "good", None) is not None:
        return [a.type.good.format(**places)]
    return [sorted(a.choices)[0]]


@pytest.mark.parametrize(("command", "option", "bad"), CASES, ids=[" ".join(c) for c in CASES])
def test_a_bad_value_is_one_line_and_exit_2(command, option, bad, places, capsys, monkeypatch):
    import keypatch.reconstructors.loading as loading

    monkeypatch.setattr(loading, "load_mae", lambda *a, **k: pytest.fail("work started"))
    p = _commands()[command]
    value = bad.format(**places)
    argv = command.split()
    for a in _valued(p):
        if _name(a) == option:
            argv += ([option] if a.option_strings else []) + [value]
        elif a.required or not a.option_strings:
            argv += ([a.option_strings[-1]] if a.option_strings else []) + _good(a, places)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    shown = next(argparse._get_action_name(a) for a in _valued(p) if _name(a) == option)
    assert err.startswith(f"keypatch {command}: error: argument {shown}: "), err
    assert repr(value) in err or value in err, err


@pytest.mark.parametrize("start", ["200", "14,0", "0,14", "196"])
def test_a_start_outside_the_grid_is_one_line_before_any_image(start, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "a.png")
    assert main(["propose", str(tmp_path / "a.png"), "--ratio", "0.05", "--start", start, "--model", "default",
                 "--quiet", "--out", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "is outside a" in err and "grid" in err
    assert not (tmp_path / "res").exists()  # nothing was stored, nor a store made
