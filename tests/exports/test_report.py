"""``keypatch report``: one card per record, settings side by side, every link resolves, offline."""

import json
import re
import shutil
import subprocess
from html import unescape as html_unescape
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
    assert {c["data-setting"] for c in page.cards} == {r.settings.flags() for r in records}
    assert len({c["data-setting"] for c in page.cards}) == 3
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


def test_settings_that_differ_by_model_get_headings_and_sorts_of_their_own(tmp_path, photo_dir, capsys):
    out = tmp_path / "res"
    one = photo_dir / "chelsea.jpg"
    for model, paths in (("random:toy", [photo_dir]), ("random:toy:1", [one])):
        assert main(["propose", *map(str, paths), "--model", model, "--ratio", "0.25", "--strategy", "random",
                     "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", "--out", str(out), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"] == 2
    html = (out / "report" / "index.html").read_text()
    headings = re.findall(r"<h3[^>]*>([^<]*)</h3>", html)  # short titles: the options alike for all are left out
    assert sorted(set(headings)) == ["random r=0.25 model random:toy", "random r=0.25 model random:toy:1"]
    # the page's own sort, run by node on the three sections: images lacking the setting go last
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = html.split("<script>")[1].split("</script>")[0]
    key = next(r for r in _records(out) if r.model_id == "random:toy:1").settings.flags()
    sections = re.findall(r'<section class="image" data-name="([^"]+)"', html)
    cards = {name: re.findall(r'data-setting="([^"]+)" data-loss="([^"]+)"', part)
             for name, part in zip(sections, html.split('<section class="image"')[1:], strict=True)}
    harness = FAKE_DOM % (json.dumps({n: [[html_unescape(k), float(v)] for k, v in c] for n, c in cards.items()}),
                          json.dumps(html_unescape(key)))
    for how in ("loss-asc", "loss-desc"):
        order = subprocess.run([node, "-e", harness + script + f"document.sort = {how!r}; sortSections();"
                                "console.log(JSON.stringify(box.order));"], capture_output=True, text=True, check=True)
        assert json.loads(order.stdout)[0] == "chelsea.jpg", how  # the one image with that setting comes first


def _records(out):
    with ResultStore(out, read_only=True) as s:
        return s.records()


FAKE_DOM = """
const data = %s, key = %s;
const CSS = { escape: s => s };
const mk = name => ({ dataset: { name }, querySelector: q => { const m = q.match(/data-setting="(.*)"]$/);
    const c = data[name].find(([k]) => k === m[1]); return c ? { dataset: { loss: String(c[1]) } } : null; },
  querySelectorAll: () => data[name].map(([k, v]) => ({ dataset: { loss: String(v) } })) });
const box = { order: [], secs: Object.keys(data).sort().reverse().map(mk),
  querySelectorAll: () => box.secs, appendChild: s => box.order.push(s.dataset.name) };
const document = { sort: '',
  getElementById: id => id === 'images' ? box : { value: id === 'sort' ? document.sort : key } };
"""
