"""Annotation-tool exports round-trip through the libraries that read them (pycocotools, label-studio-sdk)."""

import json

import numpy as np
import pytest
from PIL import Image

from keypatch.cli.main import main
from keypatch.geometry import PatchGrid
from keypatch.store import ResultStore
from keypatch.store.annotations import coco_rle, kept_mask, labelstudio_rle, patch_box

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
        with Image.open(img["file_name"]) as im:
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


def test_labelstudio_tasks_decode_with_the_sdk(exported):
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    out, records = exported
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    assert len(tasks) == 2 and "BrushLabels" in (out / "labelstudio_config.xml").read_text()
    for task in tasks:
        r = records[task["data"]["name"]]
        (result,) = task["predictions"][0]["result"]
        assert task["data"]["image"] == r.image_path and result["value"]["brushlabels"] == ["key_patch"]
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
    with pytest.raises(SystemExit):
        main(["export", "--out", str(out), "--format", "yolo"])
