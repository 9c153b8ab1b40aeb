"""Annotations back: a Label Studio JSON export as sparse label masks, and SparseLabels."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from keypatch.cli.main import main
from keypatch.data.labels import IGNORE, SparseLabels, decode_rle, image_name, write_label_masks
from keypatch.untrusted import HostileFileError

W, H = 40, 30


def _rle(mask: np.ndarray) -> list[int]:
    """Label Studio's own encoder (label-studio-sdk) of an RGBA image whose alpha is the mask."""
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (255, 0, 0, 255)
    return [int(v) for v in brush.encode_rle(rgba.ravel())]


def _export(tmp_path, brush_mask):
    res = [
        {"type": "brushlabels", "original_width": W, "original_height": H, "from_name": "tag", "to_name": "image",
         "value": {"format": "rle", "rle": _rle(brush_mask), "brushlabels": ["cat"]}},
        {"type": "rectanglelabels", "original_width": W, "original_height": H,
         "value": {"x": 50, "y": 0, "width": 25, "height": 20, "rotation": 0, "rectanglelabels": ["dog"]}},
        {"type": "polygonlabels", "original_width": W, "original_height": H,
         "value": {"points": [[0, 80], [20, 80], [20, 100], [0, 100]], "polygonlabels": ["dog"]}},
        {"type": "choices", "value": {"choices": ["x"]}},
    ]
    tasks = [{"id": 7, "data": {"image": "/data/local-files/?d=pool/photo%201.jpg"},
              "annotations": [{"id": 3, "result": res}, {"id": 4, "was_cancelled": True, "result": []}]},
             {"id": 8, "data": {"image": "/data/upload/1/abc-other.png"}, "annotations": []}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def test_rle_decodes_what_label_studio_encodes():
    g = np.random.default_rng(0)
    mask = g.random((H, W)) < 0.3
    rgba = decode_rle(_rle(mask), H * W * 4, file="x", entry="rle").reshape(H, W, 4)
    assert np.array_equal(rgba[:, :, 3] == 255, mask) and np.array_equal(rgba[:, :, 0] == 255, mask)


def test_masks_hold_class_ids_on_annotated_pixels_and_255_elsewhere(tmp_path):
    brush = np.zeros((H, W), dtype=bool)
    brush[5:10, 2:8] = True
    path = _export(tmp_path, brush)
    with pytest.warns(UserWarning, match="choices"):
        got = write_label_masks(path, tmp_path / "labels", classes={"cat": 3, "dog": 5})
    mask = np.asarray(Image.open(got.masks["photo 1"]))
    assert mask.shape == (H, W) and set(got.masks) == {"photo 1"}  # the task without annotations: no mask
    assert (mask[brush] == 3).all()
    rect = np.zeros((H, W), dtype=bool)
    rect[0:7, 20:31] = True  # x 50-75% of 40, y 0-20% of 30, and the edge pixels PIL fills
    assert (mask[1:5, 21:29] == 5).all() and (mask[24:29, 1:7] == 5).all()  # the rectangle, the polygon
    annotated = brush | rect
    annotated[24:30, 0:9] = True
    assert (mask[~annotated] == IGNORE).all()
    assert json.loads((tmp_path / "labels" / "classes.json").read_text()) == {"cat": 3, "dog": 5}


def test_cli_labels_with_a_classes_list_and_sparse_labels_for_training(tmp_path, capsys):
    brush = np.zeros((H, W), dtype=bool)
    brush[10:20, 10:20] = True
    path = _export(tmp_path, brush)
    (tmp_path / "classes.json").write_text(json.dumps(["background", "cat", "dog"]))
    assert main(["labels", str(path), "--out", str(tmp_path / "m"), "--classes", str(tmp_path / "classes.json"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["masks"] == 1 and out["classes"] == {"background": 0, "cat": 1, "dog": 2}
    pool = tmp_path / "pool"
    pool.mkdir()
    Image.fromarray(np.full((H, W, 3), 100, dtype=np.uint8)).save(pool / "photo 1.jpg")
    data = SparseLabels(pool, tmp_path / "m")
    image, mask = data[0]
    assert len(data) == 1 and image.shape == (3, H, W) and mask.dtype == torch.long
    assert (mask[10:20, 10:20] == 1).all() and int((mask != IGNORE).sum()) > 100
    logits = torch.zeros(1, 3, H, W, requires_grad=True)
    torch.nn.functional.cross_entropy(logits, mask[None], ignore_index=IGNORE).backward()
    assert logits.grad[0, :, 25, 35].abs().sum() == 0  # a pixel nobody annotated teaches nothing


def test_hostile_exports_are_refused_naming_the_entry(tmp_path):
    for image, match in (("/data/local-files/?d=../../etc/passwd", None), ("", "not an image path")):
        if match is None:  # the name is the last component: passwd; nothing escapes the output folder
            assert image_name(image, file="e", entry="x") == "passwd"
            continue
        with pytest.raises(HostileFileError, match=match):
            image_name(image, file="e", entry="x")
    huge = [{"data": {"image": "a.jpg"}, "annotations": [{"result": [
        {"type": "rectanglelabels", "original_width": 10 ** 9, "original_height": 10,
         "value": {"x": 0, "y": 0, "width": 1, "height": 1, "rectanglelabels": ["a"]}}]}]}]
    with pytest.raises(HostileFileError, match="original_width"):
        write_label_masks(huge, tmp_path / "o")
    bad_rle = [{"data": {"image": "a.jpg"}, "annotations": [{"result": [
        {"type": "brushlabels", "original_width": 4, "original_height": 4,
         "value": {"format": "rle", "rle": [0, 0, 0, 9, 1], "brushlabels": ["a"]}}]}]}]
    with pytest.raises(HostileFileError, match="rle"):
        write_label_masks(bad_rle, tmp_path / "o")
    with pytest.raises(HostileFileError, match="not a Label Studio JSON export"):
        (tmp_path / "d.json").write_text("{}")
        write_label_masks(tmp_path / "d.json", tmp_path / "o")
