"""The embedded default MAE: real, offline, better than trivial, and KPP with it beats random."""

import socket

import pytest
import torch

import keypatch
from keypatch.experiments.photos import load_test_photos
from keypatch.experiments.quality import evaluate_quality
from keypatch.geometry import load_images
from keypatch.reconstructors.loading import DEFAULT_WEIGHTS


@pytest.fixture(scope="module")
def default_model():
    return keypatch.load_mae("default", device="cpu")


@pytest.fixture(scope="module")
def test_images():
    photos = load_test_photos()
    assert len(photos) >= 10, "the test photos of scikit-image/scikit-learn/matplotlib should load offline"
    return load_images(list(photos.values()))


def test_loads_with_the_network_unreachable(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = keypatch.load_mae("default", device="cpu")
    assert model.model_id.startswith("default@") and model.grid.n == 196 and model.grid.center == 105
    assert DEFAULT_WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert keypatch.load_mae(model.model_id, device="cpu").model_id == model.model_id
    with pytest.raises(ValueError, match="another version"):
        keypatch.load_mae("default@00000000")


def test_beats_the_mean_colour_predictor_on_the_test_photos(default_model, test_images):
    report = evaluate_quality(default_model, test_images, visible_ratio=0.25, seed=0)
    assert report.n_images == test_images.shape[0]
    assert report.ratio <= 0.6, f"MAE {report.mae_loss:.4f} vs mean colour {report.trivial_loss:.4f}"


def test_the_default_model_is_loaded_once_per_process(monkeypatch):
    import keypatch.api as api
    import keypatch.reconstructors.loading as loading

    api._default_model.cache_clear()
    calls = []
    real = loading.load_file
    monkeypatch.setattr(loading, "load_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = api.resolve_model(None, "cpu")
    assert api.resolve_model("default", "cpu") is first and api.resolve_model(None, "cpu") is first
    assert len(calls) == 1
    api._default_model.cache_clear()
