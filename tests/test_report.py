"""``keypatch report``: one card per record, settings side by side, every link resolves, offline."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from keypatch.cli.main import main
from keypatch.store import ResultStore


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.cards, self.sections, self.external = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                (self.external if re.match(r"^[a-z]+://|^//", a[key]) else self.links).append(a[key])
        if tag == "div" and "card" in (a.get("class") or "").split():
            self.cards.append(a)
        if tag == "section":
            self.sections.append(a["data-name"])


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, photo_dir):
    root = tmp_path_factory.mktemp("rep")
    out = root / "res"
    for extra in (["--ratio", "0.05"], ["--ratio", "0.1"], ["--ratio", "0.05", "--strategy", "random"]):
        assert main(["propose", str(photo_dir), "--model", "random:toy", "--quiet", "--out", str(out), *extra]) == 0
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    return out


def test_one_card_per_record_and_every_link_resolves(gallery):
    index = gallery / "report" / "index.html"
    page = _Page()
    page.feed(index.read_text())
    with ResultStore(gallery / "results.sqlite") as s:
        records = s.records()
    assert len(page.cards) == len(records) == 9  # 3 photos x 3 settings
    assert sorted(page.sections) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    assert {c["data-setting"] for c in page.cards} == {"greedy r=0.05 start center precision=float32",
                                                        "greedy r=0.1 start center precision=float32",
                                                        "random r=0.05 seed=0"}
    for c in page.cards:
        assert float(c["data-loss"]) > 0
    assert page.external == []  # offline: nothing to fetch
    assert len(page.links) == 9 + 3  # a picture per card, the original per image
    for link in page.links:
        assert (index.parent / link).resolve().is_file(), link
    with Image.open(index.parent / page.links[1]) as im:
        assert im.size[0] > im.size[1] > 0


def test_a_missing_image_keeps_its_card(gallery, tmp_path, capsys):
    with ResultStore(gallery / "results.sqlite") as s:
        r = s.records(strategy="random")[0]
    moved = Path(r.image_path).with_suffix(".moved")
    Path(r.image_path).rename(moved)
    try:
        assert main(["report", "--out", str(gallery), "--report", str(tmp_path / "g"), "--quiet"]) == 0
    finally:
        moved.rename(r.image_path)
    assert "3 records have no picture" in capsys.readouterr().err
    page = _Page()
    page.feed((tmp_path / "g" / "index.html").read_text())
    assert len(page.cards) == 9 and len(page.links) == 6 + 2
    assert all((tmp_path / "g" / link).resolve().is_file() for link in page.links)


def test_no_records_is_an_error(tmp_path, capsys):
    with ResultStore(tmp_path / "results.sqlite"):
        pass
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "no records" in capsys.readouterr().err
