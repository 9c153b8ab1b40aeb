"""keypatch.untrusted: the one check per kind of value read from a file made elsewhere."""

from __future__ import annotations

import json
import os

import pytest

from keypatch.untrusted import (
    HostileFileError,
    bounded,
    component,
    input_files,
    inside,
    output_path,
    read_json,
    relative_name,
)

WHERE = {"file": "m.json", "entry": "images[3].name"}


@pytest.mark.parametrize("name", ["a.jpg", "cats/a.jpg", "./cats/a.jpg", "cats//a.jpg", "a..b.jpg", "..a", "é/ü.png"])
def test_relative_names_that_stay_in_their_folder_are_kept(name, tmp_path):
    assert relative_name(name, **WHERE) == name
    assert inside(tmp_path, name, **WHERE) == tmp_path / name


@pytest.mark.parametrize("name", ["../../pwned.jpg", "cats/../../x.png", "..", "/etc/passwd", "//host/x",
                                  "C:/x.png", "c:x.png", "..\\..\\x.png", "\\\\host\\share\\x", "a\\b.png",
                                  "a\x00.png", "a\nb.png", "", ".", "./", 7, None, ["a"], b"a.png", "x" * 5000])
def test_names_that_leave_their_folder_or_are_no_name_are_refused(name, tmp_path):
    with pytest.raises(HostileFileError) as err:
        inside(tmp_path, name, **WHERE)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith("m.json: images[3].name ") and err.value.file == "m.json"


def test_a_link_out_of_the_folder_is_refused_and_one_inside_is_followed(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "out").symlink_to(elsewhere)
    (root / "here").symlink_to(root / "sub")
    with pytest.raises(HostileFileError, match="outside"):
        inside(root, "out/a.png", **WHERE)
    assert inside(root, "here/a.png", **WHERE) == root / "here" / "a.png"
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(HostileFileError):
        inside(root, "loop/a.png", **WHERE)


def test_component_is_one_plain_name():
    assert component("000012", **WHERE) == "000012"
    for bad in ("a/b", "..", ".", "/a", ""):
        with pytest.raises(HostileFileError):
            component(bad, **WHERE)


def test_an_output_is_never_an_input_by_path_link_or_hard_link(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"image")
    (tmp_path / "soft.png").symlink_to(src)
    os.link(src, tmp_path / "hard.png")
    inputs = input_files([src])
    for name in ("in.png", "soft.png", "hard.png"):
        with pytest.raises(HostileFileError, match="one of the inputs"):
            output_path(tmp_path, name, inputs=inputs, **WHERE)
    assert output_path(tmp_path, "new.png", inputs=inputs, **WHERE) == tmp_path / "new.png"


def test_bounded_integers():
    assert bounded(5, 0, 9, **WHERE) == 5 and bounded("12", 0, 99, text=True, **WHERE) == 12
    for bad in (-1, 10, True, 5.0, "5", None, 10**40):
        with pytest.raises(HostileFileError):
            bounded(bad, 0, 9, **WHERE)
    for bad in ("1e3", " 5", "5" * 30, 5, "0x10"):
        with pytest.raises(HostileFileError):
            bounded(bad, 0, 10**6, text=True, **WHERE)


def test_json_is_bounded_before_it_is_read_and_bad_json_is_one_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"a": list(range(100))}))
    assert read_json(path, max_bytes=10_000)["a"][-1] == 99
    with pytest.raises(HostileFileError, match="more than the 100"):
        read_json(path, max_bytes=100)
    for text in ("[" * 100_000 + "]" * 100_000, "{", "\xff\xfe", "1" * 10_000):
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(HostileFileError, match="not valid JSON"):
            read_json(path, max_bytes=1 << 20)
