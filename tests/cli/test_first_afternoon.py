"""What a new user met in a first afternoon, each case run as it was met (docs/cli.md).

Symlink loops in a folder, results on a read-only mount, what a record says of its start, the
counts of one content at two paths, ``--json`` when interrupted, notes that name their file, the
gallery's cards and pictures, and what the README says of the embedded model's pictures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import keypatch.api
from keypatch.cli.main import main
from keypatch.experiments.pictures import TITLE_HEIGHT, TITLE_SIZE
from keypatch.serve import Backend
from keypatch.store import MAY_MOVE, ResultStore
from tests.conftest import interrupt_call, photo_array

TOY = ["--model", "random:toy", "--quiet"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def photo(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo_array("chelsea")).save(folder / "chelsea.jpg", quality=90)
    return folder


def _records(out: Path) -> list:
    with ResultStore(out / "results.sqlite", create=False, read_only=True) as store:
        return store.records()


def test_1_a_symlink_loop_is_a_skipped_file_and_the_good_photo_is_computed(photo, tmp_path, capsys):
    os.symlink("y.jpg", photo / "x.jpg")
    os.symlink("x.jpg", photo / "y.jpg")
    os.symlink("nowhere.jpg", photo / "broken.jpg")
    out = tmp_path / "out"
    assert main(["propose", str(photo), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    captured = capsys.readouterr()
    assert [Path(r.image_path).name for r in _records(out)] == ["chelsea.jpg"]
    for name in ("x.jpg", "y.jpg", "broken.jpg"):
        assert name in captured.err and "skipped" in captured.err, captured.err
    assert "1 new, 0 already stored, 3 unreadable (of 4)" in captured.out


def _read_only(results: Path, commands: list[list[str]], work: Path) -> list[tuple[int, str]]:
    """Run keypatch ``commands`` with ``results`` bind-mounted read-only at ``work/ro`` (a mount
    namespace of their own, so nothing outlives them); ``(exit code, stderr)`` each."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    mnt = work / "ro"
    mnt.mkdir()
    lines = [f"mount --bind {results} {mnt} && mount -o remount,bind,ro {mnt} || exit 99"]
    for i, cmd in enumerate(commands):
        args = " ".join(f"'{a}'" for a in cmd)
        lines.append(f"{sys.executable} -m keypatch.cli.main {args} > {work}/out{i} 2> {work}/err{i}; "
                     f"echo $? > {work}/rc{i}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", "\n".join(lines)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode == 99 or not (work / "rc0").exists():
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()[:200]}")
    return [(int((work / f"rc{i}").read_text()), (work / f"err{i}").read_text()) for i in range(len(commands))]


def test_2_a_read_only_store_is_read_and_writing_names_the_option_that_writes_elsewhere(photo, tmp_path):
    out = tmp_path / "results"
    assert main(["propose", str(photo), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    before = sorted(p.name for p in out.iterdir())
    mnt, elsewhere = tmp_path / "work" / "ro", tmp_path / "elsewhere"
    (tmp_path / "work").mkdir()
    results = _read_only(out, [
        ["export", "--out", str(mnt), "--quiet"],
        ["export", "--out", str(mnt), "--ids", str(elsewhere / "ids.json"), "--pictures", str(elsewhere / "pics"),
         "--quiet"],
        ["report", "--out", str(mnt), "--quiet"],
        ["report", "--out", str(mnt), "--report", str(elsewhere / "gallery"), "--quiet"],
        ["store", "info", "--out", str(mnt)],
    ], tmp_path / "work")
    (rc_export, err_export), (rc_ids, _), (rc_report, err_report), (rc_gallery, _), (rc_info, _) = results
    assert rc_export == 2 and "read-only" in err_export and "--ids FILE" in err_export and "--pictures" in err_export
    assert rc_report == 2 and "read-only" in err_report and "--report DIR2" in err_report
    assert (rc_ids, rc_gallery, rc_info) == (0, 0, 0)
    assert (elsewhere / "ids.json").is_file() and (elsewhere / "gallery" / "index.html").is_file()
    assert sorted(p.name for p in out.iterdir()) == before  # nothing was written beside the store


def test_3_a_record_says_what_the_strategy_did_with_its_start(photo, tmp_path, toy_model, capsys):
    out = tmp_path / "out"
    for strategy in ("greedy", "swap", "backward"):
        assert main(["propose", str(photo), "--ratio", "0.25", "--strategy", strategy, "--out", str(out), *TOY]) == 0
    starts = {r.strategy: r.start for r in _records(out)}
    assert starts == {"greedy": "center", "swap": "center" + MAY_MOVE, "backward": ""}
    # the export and the gallery say so, and --start selects it by the start it began from
    assert main(["export", "--out", str(out), "--strategy", "swap", "--start", "center", "--no-pictures",
                 "--ids", str(tmp_path / "swap.json"), "--quiet"]) == 0
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    assert "start center (may move)" in (out / "report" / "index.html").read_text()
    # a start given as ROW,COL is stored as its index, and export finds it by either
    out2 = tmp_path / "out2"
    assert main(["propose", str(photo), "--ratio", "0.25", "--start", "1,2", "--out", str(out2), *TOY]) == 0
    assert [r.start for r in _records(out2)] == ["6"]
    for given in ("1,2", "6"):
        assert main(["export", "--out", str(out2), "--start", given, "--no-pictures", "--ids",
                     str(tmp_path / f"{given}.json"), "--quiet"]) == 0, capsys.readouterr().err
    assert main(["export", "--out", str(out2), "--start", "0,0", "--no-pictures", "--quiet"]) == 2
    # serve -o start=none proposes from nothing, and its records say so
    backend = Backend(0.25, "greedy", toy_model, tmp_path / "served", thread=False, start="none")
    assert backend.job.start == "none" and "start none" in backend.model_version
    with pytest.raises(ValueError, match="given twice"):
        keypatch.api.build_proposer("greedy", keypatch.api.run_settings(None, "center"), {"start": "none"})


def test_4_the_docs_say_what_a_quantized_dataset_gives_without_a_transform():
    from keypatch.data import QuantizedDataset
    from keypatch.data.dataset import _to_tensor

    page = " ".join((ROOT / "docs" / "quantize.md").read_text().split())
    doc = " ".join(QuantizedDataset.__doc__.split())
    assert "without a `transform`, the image is a `(3, H, W)` float tensor in `[0, 1]`" in page
    assert "Without a ``transform``, the image comes as a ``(3, H, W)`` float tensor in ``[0, 1]``" in doc
    x = _to_tensor(Image.fromarray(photo_array("coffee")[:32, :48]))  # what dataset[i] gives without one
    assert x.dtype.is_floating_point and tuple(x.shape) == (3, 32, 48) and 0 <= x.min() and x.max() <= 1


def test_6_one_content_at_two_paths_is_counted_alike_by_every_command(photo, tmp_path, capsys):
    shutil.copy(photo / "chelsea.jpg", photo / "copy.jpg")
    out = tmp_path / "out"
    assert main(["propose", str(photo), "--ratio", "0.25", "--out", str(out), *TOY]) == 0
    capsys.readouterr()
    want = "1 record of 1 image at 2 paths, 1 setting"
    assert main(["store", "info", "--out", str(out)]) == 0
    assert want in capsys.readouterr().out
    assert main(["export", "--out", str(out), "--no-pictures", "--quiet"]) == 0
    assert want in capsys.readouterr().out
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    assert want in capsys.readouterr().out
    assert want in (out / "report" / "index.html").read_text()
    assert main(["export", "--out", str(out), "--no-pictures", "--quiet", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["records"], s["images"], s["paths"]) == (1, 1, 2)


def test_7_json_prints_what_was_kept_when_interrupted(photo, tmp_path, monkeypatch, capsys):
    Image.fromarray(photo_array("coffee")).save(photo / "coffee.jpg")
    Image.fromarray(photo_array("astronaut")).save(photo / "astronaut.jpg")
    real = keypatch.api.propose_normalised
    monkeypatch.setattr(keypatch.api, "propose_normalised", interrupt_call(real, 2))
    out = tmp_path / "out"
    assert main(["propose", str(photo), "--ratio", "0.25", "--out", str(out), "--json", *TOY]) == 130
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["interrupted"] is True and summary["done"] == 1 == len(_records(out))
    assert summary["found"] == 3 and "finished records are kept" in captured.err


def test_8_notes_of_the_experiments_name_the_file(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo_array("chelsea")).save(folder / "wide-cat.jpg")
    assert main(["experiment", "ablation", str(folder), "--max-ratio", "0.25", "--out", str(tmp_path / "abl"),
                 *TOY]) == 0
    err = capsys.readouterr().err
    assert "not square" in err and "wide-cat.jpg" in err


def test_9_gallery_cards_have_short_titles_with_details_on_demand_and_readable_pictures(photo, tmp_path):
    out = tmp_path / "out"
    assert main(["propose", str(photo), "--ratio", "0.25", "--strategy", "swap", "-o", "rounds=1", "-o", "reach=2",
                 "--out", str(out), *TOY]) == 0
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    page = (out / "report" / "index.html").read_text()
    title = page.split("<h3", 1)[1].split("</h3>", 1)[0]
    assert "rounds=" not in title.split(">", 1)[1] and "swap r=0.25" in title
    assert "<details><summary>" in page and "rounds=1" in page.split("<details>", 1)[1]
    assert "flex-wrap: wrap" in page and "overflow-wrap: anywhere" in page
    assert TITLE_SIZE >= 16 and TITLE_HEIGHT >= TITLE_SIZE + 2


def test_10_readme_says_what_the_embedded_models_pictures_look_like():
    text = (ROOT / "README.md").read_text()
    head = text.split("## Python", 1)[0]
    assert "embedded" in head and "blocky" in head and "facebook/vit-mae-base" in head
