"""Every registered export format writes what it names for one setting's records; a new format is one
function and one registry line, picked up by ``keypatch export --format`` with no edit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from keypatch.cli.main import main
from keypatch.exports import EXPORTS, export_results, register_export
from keypatch.store import ResultStore


@pytest.fixture(scope="module")
def stored(tmp_path_factory, photo_dir):
    root = tmp_path_factory.mktemp("fmt")
    data = root / "imgs"
    data.mkdir()
    for src in sorted(photo_dir.iterdir())[:2]:
        Image.open(src).resize((96, 72)).save(data / f"{src.stem}.png")
    out = root / "res"
    assert main(["propose", str(data), "--ratio", "0.25", "--model", "random:toy", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_every_format_writes_the_files_it_names(name, stored, tmp_path):
    s = export_results(stored, tmp_path / "ids.json", pictures=False, progress=False, formats=[name])
    named = [Path(v) for k, v in s.items() if k in EXPORTS or k == "json"]
    assert named and all(p.exists() for p in named), s
    assert s["records"] == 2 and Path(s["json"]).is_file()  # patch_ids.json always


@pytest.fixture
def csv_format():
    """A throw-away format: a function and a registry line."""

    @register_export("csv-test")
    def write_csv(records, context):
        path = context.folder / "patches.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            for r in records:
                w.writerow([context.refs.relative(r.image_path), " ".join(map(str, r.patches))])
        return {"csv-test": str(path)}

    yield write_csv
    del EXPORTS["csv-test"]


def test_a_new_format_is_picked_up_by_the_command_line(csv_format, stored, capsys):
    assert main(["export", "--out", str(stored), "--no-pictures", "--quiet", "--format", "csv-test"]) == 0
    rows = list(csv.reader((stored / "patches.csv").open()))
    with ResultStore(stored, read_only=True) as s:
        want = sorted([Path(r.image_path).name, " ".join(map(str, r.patches))] for r in s.records())
    assert sorted(rows) == want
