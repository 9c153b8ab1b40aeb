"""Shared fixtures: tiny models, real photos from scikit-image, device marks (torchvision style)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from keypatch.reconstructors import MAE, MAEConfig, load_mae

TEST_PHOTOS = ["astronaut", "chelsea", "coffee"]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def notes_said_anew():
    """Each test starts with no input note given yet (the API gives each kind once per process)."""
    from keypatch.geometry.decode import reset_notes

    reset_notes()


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (small ops run faster so, and far faster on busy cores).

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def toy_model() -> MAE:
    """The ``toy`` preset with seeded random weights: 64x64 images, 4x4 grid of 16x16 patches."""
    return load_mae("random:toy:0", device="cpu")


@pytest.fixture(scope="session")
def tiny224() -> MAE:
    """A very narrow MAE on the paper's 224x224 / 14x14 geometry (cheap, random weights)."""
    m = MAE(MAEConfig(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2))
    m.reset_parameters(seed=0)
    m.model_id = "tiny224"
    return m.eval()


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` smooth random ``size x size`` images (8x8 noise, bilinear), normalised: ``(n, 3, size, size)``."""
    from keypatch.geometry import normalize

    small = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.stack([normalize(torch.nn.functional.interpolate(s[None], size=size, mode="bilinear")[0])
                        for s in small])


def photo_array(name: str) -> np.ndarray:
    """A real photo shipped with scikit-image, as HxWx3 uint8."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    return arr[..., :3] if arr.ndim == 3 else np.stack([arr] * 3, -1)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A folder of real photos (scikit-image's astronaut, chelsea, coffee) as JPEG files."""
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    for name in TEST_PHOTOS:
        Image.fromarray(photo_array(name)).save(d / f"{name}.jpg", quality=95)
    return d


@pytest.fixture
def toy_image() -> torch.Tensor:
    """A smooth random 64x64 image, normalised."""
    from keypatch.geometry import normalize

    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=64, mode="bilinear")[0]
    return normalize(x)


def interrupt_call(fn, at: int):
    """``fn`` that raises KeyboardInterrupt (as Ctrl-C would) at its ``at``-th call instead of running."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return wrapped


def brush_patches(result: dict, grid) -> list[int]:
    """The patches a brush result covers (at least half of their pixels)."""
    import numpy as np

    from keypatch.data.labels import decode_rle
    from keypatch.rounds.after import patches_covered

    w, h = result["original_width"], result["original_height"]
    rgba = decode_rle(result["value"]["rle"], w * h * 4, file="test", entry="rle").reshape(h, w, 4)
    return patches_covered(np.asarray(rgba[:, :, 3] >= 128), grid)
