import numpy as np
import pytest
import torch
from PIL import Image

from keypatch.geometry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchGrid,
    denormalize,
    load_image,
    patchify,
    unpatchify,
)


def test_grid_of_the_paper():
    g = PatchGrid(224, 16)
    assert (g.n, g.rows, g.cols) == (196, 14, 14)
    assert g.center == 105 and g.rc(105) == (7, 7)
    assert all(g.index(*g.rc(i)) == i for i in range(g.n))
    with pytest.raises(IndexError):
        g.rc(196)
    with pytest.raises(ValueError):
        PatchGrid(224, 15)


@pytest.mark.parametrize("ratio,k", [(0.05, 10), (0.1, 20), (0.25, 49), (0.5, 98), (1.0, 196)])
def test_count_is_round_r_n(ratio, k):
    assert PatchGrid().count(ratio) == k == round(ratio * 196)


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), "0.1"])
def test_bad_ratio_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="ratio"):
        PatchGrid().count(bad)


def test_patchify_layout_and_roundtrip():
    x = torch.randn(2, 3, 64, 64)
    p = patchify(x, 16)
    assert p.shape == (2, 16, 768)
    # patch 5 = row 1, col 1; its value (py=2, px=3, c=1) sits at index (2*16+3)*3+1
    assert p[1, 5, (2 * 16 + 3) * 3 + 1] == x[1, 1, 16 + 2, 16 + 3]
    assert torch.equal(unpatchify(p, 16), x)


def test_load_image_resizes_and_normalises(tmp_path):
    arr = np.zeros((100, 150, 3), np.uint8)
    arr[..., 0] = 255
    path = tmp_path / "red.png"
    Image.fromarray(arr).save(path)
    x = load_image(path)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]]
    assert x[0].mean().item() == pytest.approx(expected[0], abs=1e-5)
    assert x[1].mean().item() == pytest.approx(expected[1], abs=1e-5)
    assert torch.allclose(load_image(Image.open(path)), x)
    assert torch.allclose(denormalize(x)[0], torch.ones(224, 224), atol=1e-5)
    gray = load_image(np.full((30, 30), 128, np.uint8), size=64)
    assert gray.shape == (3, 64, 64)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(bad)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_grid_distances_are_chebyshev():
    g = PatchGrid(224, 16)
    d = g.distances()
    assert d.shape == (196, 196) and (d == d.T).all() and (d.diagonal() == 0).all()
    assert d[g.center, g.index(6, 6)] == 1 and d[g.center, g.index(7, 9)] == 2 and d[0, 195] == 13
    assert int((d[g.center] == 1).sum()) == 8 and int((d[0] == 1).sum()) == 3  # inside / corner


def test_importing_keypatch_and_the_decoding_workers_leaves_torch_out():
    """``import keypatch`` is cheap, and Ray's decoding tasks (keypatch.engines.ray_workers) never load torch."""
    import subprocess
    import sys

    code = ("import sys, keypatch, keypatch.engines.ray_workers as w, numpy as np\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "x = w.decode_pixels(np.full((20, 30, 3), 255, np.uint8), 32)\n"
            "assert 'torch' not in sys.modules and x.shape == (3, 32, 32) and x.dtype == np.float32\n"
            "print(x[:, 0, 0].tolist())\n"
            "assert callable(keypatch.propose) and 'torch' in sys.modules  # first use imports it\n"
            "assert 'propose' in dir(keypatch) and keypatch.geometry.load_images\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    white = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert np.allclose(eval(done.stdout), white, atol=1e-6)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        import keypatch

        keypatch.nope  # noqa: B018


def test_uris_are_told_from_paths_and_file_uris_name_local_paths(tmp_path):
    from keypatch.geometry.files import file_uri_path, is_uri, local_sources

    assert is_uri("s3://bucket/train") and is_uri("file:///data") and is_uri("gs+x.y-z://a")
    assert not is_uri("photos/train") and not is_uri("C:\\photos") and not is_uri(tmp_path) and not is_uri("http//x")
    folder = tmp_path / "a b%c"
    assert file_uri_path(folder.as_uri()) == folder  # percent-escapes undone
    assert file_uri_path(f"file://localhost{tmp_path}") == tmp_path
    assert file_uri_path("s3://bucket/x") is None
    with pytest.raises(ValueError, match="not on the host 'server'"):
        file_uri_path("file://server/share/x")
    assert local_sources([tmp_path.as_uri(), str(tmp_path)], "process") == [tmp_path, tmp_path]
    with pytest.raises(ValueError, match="gs://b/x: the process engine reads files on this machine"):
        local_sources("gs://b/x", "process")
