"""Annotation-tool exports round-trip through the libraries that read them (pycocotools, label-studio-sdk)."""

import json

import numpy as np
import pytest
from PIL import Image

from keypatch.cli.main import main
from keypatch.exports.annotations import coco_rle, kept_mask, labelstudio_rle, patch_box
from keypatch.geometry import PatchGrid
from keypatch.store import ResultStore

GRID = PatchGrid()


@pytest.mark.parametrize("size", [(224, 224), (333, 250), (17, 500), (640, 427)])
def test_patch_boxes_tile_the_original_image(size):
    w, h = size
    cover = np.zeros((h, w), dtype=int)
    for p in range(GRID.n):
        x0, y0, x1, y1 = patch_box(GRID, p, w, h)
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()  # every pixel in exactly one patch
    assert patch_box(GRID, 0, w, h)[:2] == (0, 0) and patch_box(GRID, GRID.n - 1, w, h)[2:] == (w, h)
    if size == (224, 224):
        assert patch_box(GRID, 98, w, h) == (0, 112, 16, 128)  # row 7, column 0


def test_coco_rle_round_trips_through_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    for patches in ([0], [195], [0, 13, 98, 182, 195], list(range(GRID.n))):
        m = kept_mask(GRID, patches, 333, 250)
        rle = mask_utils.frPyObjects(coco_rle(m), 250, 333)
        assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
        assert int(mask_utils.area(rle)) == int(m.sum())


def test_labelstudio_rle_round_trips_through_the_sdk():
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    for patches, (w, h) in [([0], (64, 48)), ([5, 98, 195], (333, 250)), (list(range(GRID.n)), (300, 200))]:
        m = kept_mask(GRID, patches, w, h)
        decoded = brush.decode_rle(labelstudio_rle(m)).reshape(h, w, 4)
        assert np.array_equal(decoded[:, :, 3] == 255, m) and set(np.unique(decoded)) <= {0, 255}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, photo_dir):
    """Two photos of other sizes proposed with the small random model, then exported in every format."""
    root = tmp_path_factory.mktemp("ann")
    data = root / "data"
    data.mkdir()
    Image.open(photo_dir / "chelsea.jpg").resize((333, 250)).save(data / "cat.png")
    Image.open(photo_dir / "coffee.jpg").save(data / "coffee.jpg")
    out = root / "res"
    assert main(["propose", str(data), "--ratio", "0.03", "--model", "random:small", "--quiet", "--out", str(out)]) == 0
    assert main(["export", "--out", str(out), "--no-pictures", "--quiet", "--format", "coco", "--format",
                 "labelstudio", "--format", "masks"]) == 0
    with ResultStore(out / "results.sqlite") as s:
        records = {r.image_path.rsplit("/", 1)[-1].split(".")[0]: r for r in s.records()}
    return out, records


def test_coco_export_reads_back_in_pycocotools(exported):
    coco_mod = pytest.importorskip("pycocotools.coco")
    out, records = exported
    coco = coco_mod.COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["key_patch"]
    for img in coco.loadImgs(coco.getImgIds()):
        name = img["keypatch"]["name"]
        r = records[name]
        assert img["file_name"] == r.image_path.rsplit("/", 1)[-1]  # relative to the images' folder
        with Image.open(f"{coco.dataset['info']['image_root']}/{img['file_name']}") as im:
            assert (img["width"], img["height"]) == im.size
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img["id"])), key=lambda a: a["keypatch"]["rank"])
        assert [a["keypatch"]["patch"] for a in anns] == r.patches  # in pick order, with their losses
        assert [a["keypatch"]["loss"] for a in anns] == pytest.approx(r.losses)
        union = np.zeros((img["height"], img["width"]), dtype=bool)
        for a in anns:
            m = coco.annToMask(a).astype(bool)
            x, y, w, h = a["bbox"]
            assert m.sum() == a["area"] == w * h and m[y : y + h, x : x + w].all()
            union |= m
        assert np.array_equal(union, kept_mask(GRID, r.patches, img["width"], img["height"]))


def test_labelstudio_tasks_decode_with_the_sdk(exported, monkeypatch):
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    lsio = pytest.importorskip("label_studio_sdk._extensions.label_studio_tools.core.utils.io")
    out, records = exported
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert len(tasks) == 2 and "BrushLabels" in (out / "labelstudio_config.xml").read_text()
    # Label Studio's local files, served from the document root the export names (the images' folder's parent)
    monkeypatch.setattr(lsio, "LOCAL_FILES_DOCUMENT_ROOT", str(out.parent))
    for task in tasks:
        r = records[task["data"]["name"]]
        (result,) = task["predictions"][0]["result"]
        assert task["data"]["image"].startswith("/data/local-files/?d=data/")
        assert lsio.get_local_path(task["data"]["image"], download_resources=False) == r.image_path
        assert result["value"]["brushlabels"] == ["key_patch"]
        assert result["from_name"] == "tag" and result["to_name"] == "image" and result["type"] == "brushlabels"
        w, h = result["original_width"], result["original_height"]
        layers = brush.decode_from_annotation("tag", [{**result, **result["value"]}])
        (layer,) = layers.values()
        assert np.array_equal(layer == 255, kept_mask(GRID, r.patches, w, h))


def test_masks_in_the_voc_layout(exported):
    out, records = exported
    masks = out / "masks"
    names = (masks / "ImageSets" / "Segmentation" / "default.txt").read_text().split()
    assert sorted(names) == sorted(records)
    assert "key_patch:128,0,0::" in (masks / "labelmap.txt").read_text()
    for name in names:
        with Image.open(masks / "SegmentationClass" / f"{name}.png") as im, \
                Image.open(records[name].image_path) as orig:
            assert im.mode == "P" and im.size == orig.size
            assert im.getpalette()[3:6] == [128, 0, 0]
            arr = np.asarray(im)
        assert np.array_equal(arr == 1, kept_mask(GRID, records[name].patches, *orig.size))
        assert set(np.unique(arr)) == {0, 1}


def test_unknown_format_is_refused(exported, capsys):
    out, _ = exported
    assert main(["export", "--out", str(out), "--format", "yolo"]) == 2
    assert "argument --format: invalid choice: 'yolo'" in capsys.readouterr().err


def test_every_path_of_one_content_is_in_every_export_and_the_gallery(tmp_path, photo_dir, capsys, monkeypatch):
    lsio = pytest.importorskip("label_studio_sdk._extensions.label_studio_tools.core.utils.io")
    coco_mod = pytest.importorskip("pycocotools.coco")
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    raw = (photo_dir / "chelsea.jpg").read_bytes()
    for rel in ("a/cat.jpg", "b/cat copy.jpg", "a/cat.jpeg"):  # one content at three paths; two share a key
        (data / rel).write_bytes(raw)
    Image.open(photo_dir / "coffee.jpg").resize((40, 30)).save(data / "b" / "small.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(data / "b" / "dot.png")  # smaller than a patch: refused
    out = tmp_path / "res"
    assert main(["propose", str(data), "--ratio", "0.25", "--model", "random:toy", "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "dot.png is 1x1 pixels, smaller than one 16x16 patch" in err
    assert main(["export", "--out", str(out), "--quiet", "--format", "coco", "--format", "labelstudio", "--format",
                 "masks", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["records"], summary["images"], summary["paths"], summary["pictures"]) == (2, 2, 4, 4)
    # said once, naming both files of folder a that share the key "cat"
    assert captured.err.count("share a patch_ids.json key") == 1
    assert f"{data / 'a' / 'cat.jpeg'} and {data / 'a' / 'cat.jpg'}" in captured.err
    ids = json.loads((out / "patch_ids.json").read_text())
    assert sorted(ids) == ["cat", "cat copy", "cat.jpg", "small"]  # a/cat.jpeg keeps "cat"
    assert ids["cat"] == ids["cat.jpg"] == ids["cat copy"]
    coco = coco_mod.COCO(str(out / "coco.json"))
    files = sorted(i["file_name"] for i in coco.loadImgs(coco.getImgIds()))
    assert files == ["a/cat.jpeg", "a/cat.jpg", "b/cat copy.jpg", "b/small.png"]
    assert all((data / f).is_file() for f in files) and coco.dataset["info"]["image_root"] == str(data)
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    monkeypatch.setattr(lsio, "LOCAL_FILES_DOCUMENT_ROOT", summary["labelstudio_document_root"])
    found = sorted(lsio.get_local_path(t["data"]["image"], download_resources=False) for t in tasks)
    assert found == sorted(str(data / f) for f in files)  # Label Studio finds every image by the reference
    masks = (out / "masks" / "ImageSets" / "Segmentation" / "default.txt").read_text().split("\n")
    assert sorted(m for m in masks if m) == sorted(ids)
    # a URL prefix instead, and a root of one's own
    assert main(["export", "--out", str(out), "--quiet", "--no-pictures", "--format", "labelstudio", "--format",
                 "coco", "--image-url", "https://example.org/img/", "--image-root", str(tmp_path)]) == 0
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert "https://example.org/img/data/b/cat%20copy.jpg" in {t["data"]["image"] for t in tasks}
    assert "data/a/cat.jpg" in {i["file_name"] for i in json.loads((out / "coco.json").read_text())["images"]}
    capsys.readouterr()
    assert main(["export", "--out", str(out), "--no-pictures", "--image-root", str(data / "a")]) == 2
    assert "is not under the image root" in capsys.readouterr().err
    # the gallery names every path of the content
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    page = (out / "report" / "index.html").read_text()
    assert page.count('<section class="image"') == 2 and "the same file at 3 paths" in page
    for rel in ("a/cat.jpg", "a/cat.jpeg", "b/cat copy.jpg"):
        assert str(data / rel) in page
