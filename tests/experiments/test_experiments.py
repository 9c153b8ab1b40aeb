"""The paper's experiments: initial-patch ablation and classification on kept patches."""

import json

import numpy as np
import pytest
from PIL import Image

import keypatch
from keypatch.experiments.ablation import ablation_curves, write_ablation
from keypatch.experiments.classify import classification_experiment, labelled_folder, labelled_from_manifest


def test_ablation_curves_are_greedy_prefix_losses(toy_model, toy_image, tmp_path):
    other = toy_image.flip(-2)
    curves = ablation_curves([toy_image, other], 0.5, toy_model, progress=False)
    assert curves["center"].shape == curves["none"].shape == (2, 8)
    assert curves["center"][0, 0] == pytest.approx(
        keypatch.reconstruction_loss(toy_image, [toy_model.grid.center], model=toy_model), abs=1e-6)
    # starting from nothing, the first pick is the best single patch: never worse than the centre
    assert (curves["none"][:, 0] <= curves["center"][:, 0] + 1e-6).all()
    path = write_ablation(curves, 16, tmp_path)
    rows = path.read_text().splitlines()
    assert rows[0].startswith("k,ratio,mean_loss_center") and len(rows) == 9
    assert (tmp_path / "ablation.png").stat().st_size > 1000


def _two_class_folder(root, n=12):
    rng = np.random.default_rng(0)
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
            arr[..., channel] = 200
            Image.fromarray(arr).save(root / label / f"{i}.png")


def test_classification_learns_from_kept_patches(toy_model, tmp_path):
    _two_class_folder(tmp_path / "data")
    files, labels, classes = labelled_folder(tmp_path / "data")
    assert classes == ["blue", "red"] and len(files) == 24 and sorted(set(labels)) == [0, 1]
    results = classification_experiment(tmp_path / "data", toy_model, [0.125, 0.25], ["random"], epochs=15,
                                        progress=False)
    assert [(r.strategy, r.ratio) for r in results] == [("random", 0.125), ("random", 0.25)]
    assert all(r.n_test == 7 and r.n_train == 17 for r in results)
    assert all(r.test_accuracy >= 0.85 for r in results)


@pytest.mark.parametrize("strategy", ["stochastic", "swap", "greedy"])
def test_classify_trains_on_each_ratios_own_answer(toy_model, tmp_path, monkeypatch, strategy):
    """A strategy that is not prefix-consistent is run at every ratio; a prefix-consistent one is cut."""
    import keypatch.experiments.classify as classify
    from keypatch.geometry import load_images

    _two_class_folder(tmp_path / "data", n=4)
    seen = {}

    def capture(model, images, patches, *args, **kwargs):
        seen[patches.shape[1]] = patches.tolist()
        return 1.0, 1.0

    monkeypatch.setattr(classify, "finetune_and_evaluate", capture)
    classification_experiment(tmp_path / "data", toy_model, [0.25, 0.5], [strategy], progress=False)
    files, _, _ = labelled_folder(tmp_path / "data")
    x = load_images(files, 64)
    for ratio, k in ((0.25, 4), (0.5, 8)):
        assert seen[k] == [p.patches for p in keypatch.propose_batch(x, ratio, strategy, toy_model)], (strategy, k)
    cut = [p[:4] for p in seen[8]]
    assert (cut == seen[4]) == (strategy == "greedy")  # the test would pass a cut answer for neither


def test_labelled_folder_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "a.png")
    with pytest.raises(ValueError, match="two class"):
        labelled_folder(tmp_path)


def test_labels_from_a_photo_manifest(tmp_path):
    (tmp_path / "train").mkdir()
    items = []
    for i, src in enumerate(["x.rcc:gcompris/src/activities/categorization/resource/images/fishes/a.jpg",
                             "x.rcc:gcompris/src/activities/erase/resource/b.jpg",
                             "usr/share/backgrounds/c.jpg"]):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / f"{i}.jpg")
        items.append({"file": f"train/{i}.jpg", "source_path": src})
    (tmp_path / "manifest.json").write_text(json.dumps({"images": items}))
    counts = labelled_from_manifest(tmp_path / "manifest.json", tmp_path / "labelled")
    assert counts == {"fish": 1, "animals": 1}
    assert (tmp_path / "labelled" / "fish" / "0.jpg").is_file()


@pytest.mark.parametrize("file", ["../secret.jpg", "/etc/hostname", "train/../../secret.jpg", None])
def test_a_photo_manifest_naming_a_file_outside_its_folder_is_refused(file, tmp_path):
    (tmp_path / "secret.jpg").write_bytes(b"not yours")
    (tmp_path / "given").mkdir()
    source = "x.rcc:gcompris/src/activities/erase/resource/b.jpg"
    (tmp_path / "given" / "manifest.json").write_text(json.dumps({"images": [{"file": file, "source_path": source}]}))
    with pytest.raises(ValueError, match=r"manifest.json: images\[0\].file"):
        labelled_from_manifest(tmp_path / "given" / "manifest.json", tmp_path / "labelled")
    assert not (tmp_path / "labelled").exists()
