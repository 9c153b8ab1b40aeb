"""Precision: ``auto`` resolves by device, ``mixed`` picks exactly as float32, records say what was used."""

import warnings

import pytest
import torch

from keypatch import objective as objective_module
from keypatch.batch import run_propose
from keypatch.experiments.photos import load_test_photos
from keypatch.geometry import load_images
from keypatch.objective import Objective, prefix_losses
from keypatch.proposers import get_proposer
from keypatch.reconstructors import MAE, MAEConfig, load_mae
from keypatch.reconstructors import precision as precision_module
from keypatch.reconstructors.precision import native_bf16, reduced_copy, resolve_precision
from keypatch.store import ResultStore


def _deep_model() -> MAE:
    """Narrow, but with the paper's 14x14 grid and a three-block decoder."""
    cfg = MAEConfig(embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32, decoder_depth=3, decoder_num_heads=4)
    model = MAE(cfg)
    model.reset_parameters(seed=1)
    with torch.no_grad():
        model.mask_token.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def photos():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_images(list(load_test_photos().values())[:3])


def test_auto_is_mixed_only_where_bfloat16_is_native(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert native_bf16("cpu") and resolve_precision("auto", "cpu") == "mixed"
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not native_bf16("cpu") and resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("bf16", "cpu") == "bfloat16" and resolve_precision("fp32", "cpu") == "float32"
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert resolve_precision("auto", "cpu", width=768) == resolve_precision("auto", "cpu", width=1024) == "mixed"
    assert resolve_precision("auto", "cpu", width=192) == "float32"  # narrow models: bf16 does not pay
    assert resolve_precision("mixed", "cpu", width=192) == "mixed"  # asked for, it is used
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("float16", "cpu")


@pytest.mark.parametrize("model_name", ["default", "deep"])
def test_mixed_picks_equal_float32_picks(photos, model_name):
    model = load_mae("default") if model_name == "default" else _deep_model()
    fp32, _, _ = get_proposer("greedy", precision="float32").select(model, photos, 8, 0)
    proposer = get_proposer("greedy", precision="mixed")
    objective = proposer.objective(model, photos)
    mixed, losses = proposer.search(objective, 8, [0] * 3)
    assert torch.equal(mixed, fp32)
    # the reported losses are float32's: L of each prefix of the picks, scored in float32
    exact = prefix_losses(Objective(model, photos, precision="float32"), mixed)
    assert torch.allclose(losses, exact, rtol=1e-6)
    assert 0 < objective.refined < objective.evaluations.sum()
    assert (objective.relative_error > 0).all() and (objective.relative_error < 0.05).all()


def test_mixed_widens_its_margin_when_the_rescores_demand_it(photos, monkeypatch):
    """Two candidates re-scored up front, and a wide safety factor: the spread of their errors,
    measured by those re-scores, forces more of them at the first step."""
    monkeypatch.setattr(objective_module, "MIXED_REFINE", 2)
    monkeypatch.setattr(objective_module, "MIXED_FLOOR", 2)
    monkeypatch.setattr(objective_module, "MIXED_SAFETY", 50.0)
    model = load_mae("default")
    proposer = get_proposer("greedy", precision="mixed")
    objective = proposer.objective(model, photos)
    mixed, _ = proposer.search(objective, 6, [0] * 3)
    assert objective.widened >= 1
    assert torch.equal(mixed, get_proposer("greedy", precision="float32").select(model, photos, 6, 0)[0])


def test_mixed_step_scores(photos):
    """Candidates near the minimum carry float32 scores; the rest bfloat16 ones above it."""
    model = load_mae("default")
    chosen = torch.full((3, 1), model.grid.center)
    cand = torch.stack([torch.tensor([c for c in range(196) if c != model.grid.center])] * 3)
    fp32 = Objective(model, photos, precision="float32").step(chosen, cand).scores
    mixed_obj = Objective(model, photos, precision="mixed")
    mixed = mixed_obj.step(chosen, cand).scores
    assert torch.equal(mixed.argmin(1), fp32.argmin(1))
    assert torch.allclose(mixed.amin(1), fp32.amin(1), rtol=1e-6)
    exact = torch.isclose(mixed, fp32, rtol=1e-6, atol=0)
    assert exact.sum() >= 3 * 8  # at least MIXED_REFINE per image re-scored
    assert (mixed[~exact] > fp32.amin(1, keepdim=True).expand_as(mixed)[~exact]).all()
    assert mixed_obj.evaluations.tolist() == [195] * 3  # a re-scored set counts once


def test_mixed_below_a_bound_is_float32_and_the_rest_above_it(photos):
    """score(below=...): every L under its bound is float32's; the others lie above their bounds; an
    image's first MIXED_REFINE sets are all re-scored (they measure its bfloat16 error)."""
    model = load_mae("default")
    g = torch.Generator().manual_seed(5)
    sets = torch.stack([torch.randperm(196, generator=g)[:20] for _ in range(30)])
    ii = torch.arange(3).repeat_interleave(10)
    exact = Objective(model, photos, precision="float32").score(sets, ii)
    bound = exact * torch.linspace(0.9, 1.1, 30)  # a third of the sets lie under their bound
    mixed = Objective(model, photos, precision="mixed")
    first = mixed.score(sets, ii, below=bound)
    assert mixed.compared.tolist() == [10, 10, 10] and mixed.refined == 30  # all compared: calibration
    assert torch.allclose(first, exact, rtol=1e-6)
    again = mixed.score(sets, ii, below=bound)  # calibrated: only the sets near or under their bound
    assert mixed.refined < 60 and mixed.evaluations.tolist() == [20, 20, 20]
    under = exact < bound
    assert torch.allclose(again[under], exact[under], rtol=1e-6)
    assert (again[~under] >= bound[~under]).all()


def test_refine_in_mixed_moves_as_in_float32(photos):
    """swap's moves screened in bfloat16 against the current L keep float32's decisions."""
    model = load_mae("default")
    got = {prec: get_proposer("screened", precision=prec, rounds=2).select(model, photos, 12, 0)[0]
           for prec in ("float32", "mixed")}
    assert torch.equal(got["float32"], got["mixed"])


def test_bfloat16_copy_is_cached_and_follows_the_weights():
    model = _deep_model()
    a = reduced_copy(model)
    assert reduced_copy(model) is a and a.cls_token.dtype == torch.bfloat16
    with torch.no_grad():
        model.cls_token.add_(1.0)
    b = reduced_copy(model)
    assert b is not a and torch.allclose(b.cls_token.float(), model.cls_token, atol=1e-2)


def test_records_store_the_precision_used(tmp_path):
    from PIL import Image

    path = tmp_path / "chelsea.png"
    Image.fromarray(next(iter(load_test_photos().values()))).save(path)
    auto = run_propose([path], 0.02, model="default", out_dir=tmp_path, progress=False)
    assert auto["options"]["precision"] == "float32"  # the embedded model is narrow: auto is float32 everywhere
    fp32 = run_propose([path], 0.02, model="default", out_dir=tmp_path, progress=False, precision="float32")
    assert fp32["options"]["precision"] == "float32" and fp32["skipped"] == 1  # the same setting as auto's
    mixed = run_propose([path], 0.02, model="default", out_dir=tmp_path, progress=False, precision="mixed")
    assert mixed["options"]["precision"] == "mixed" and mixed["done"] == 1
    with ResultStore(tmp_path / "results.sqlite") as store:
        stored = sorted(r.options["precision"] for r in store.records())
    assert stored == ["float32", "mixed"]


@pytest.mark.skipif(not native_bf16("cpu"), reason="bfloat16 is emulated on this CPU (several times slower)")
def test_mixed_picks_equal_float32_on_vit_b(photos):
    model = load_mae("random:base")
    fp32, _, _ = get_proposer("greedy", precision="float32").select(model, photos[:1], 3, 0)
    mixed, _, _ = get_proposer("greedy", precision="mixed").select(model, photos[:1], 3, 0)
    assert torch.equal(mixed, fp32)


@pytest.mark.cuda
def test_mixed_on_cuda_picks_as_float32_on_cpu(photos):
    model = load_mae("default", device="cpu")  # "auto" would be the GPU here
    cpu, _, _ = get_proposer("greedy", precision="float32").select(model, photos, 8, 0)
    gpu_model = load_mae("default", device="cuda")
    for precision in ("float32", "mixed"):
        got, _, _ = get_proposer("greedy", precision=precision).select(gpu_model, photos.cuda(), 8, 0)
        assert torch.equal(got.cpu(), cpu), precision


def test_chunk_size_is_sized_for_the_device(photos):
    from keypatch.objective import CPU_CHUNK

    model = load_mae("default")
    assert Objective(model, photos[:1]).chunk_size == CPU_CHUNK
    assert Objective(model, photos[:1], chunk_size=5).chunk_size == 5
    with pytest.raises(ValueError, match="chunk_size"):
        Objective(model, photos[:1], chunk_size=-1)


@pytest.mark.cuda
def test_chunk_size_on_cuda_follows_free_memory():
    from keypatch.objective import CPU_CHUNK, auto_chunk

    chunk = auto_chunk(load_mae("random:base", device="cuda"))
    assert CPU_CHUNK <= chunk <= 16384


def test_a_mixed_step_with_maps_rescores_a_few_in_float32_with_the_pick_s_map(photos):
    """After its first re-scores measured the bfloat16 error, a step of few candidates with maps is
    screened in bfloat16: float32 scores and the pick's float32 map, for fewer float32 passes."""
    model = load_mae("default")
    fp32 = Objective(model, photos, precision="float32")
    mixed = Objective(model, photos, precision="mixed")
    g = torch.Generator().manual_seed(3)
    calibrated_steps = 0
    for _ in range(5):
        chosen = torch.stack([torch.randperm(196, generator=g)[:10] for _ in range(3)])
        free = torch.ones(3, 196, dtype=torch.bool).scatter_(1, chosen, False)
        cand = torch.stack([row.nonzero()[:6, 0] for row in free])
        before, calibrated = mixed.refined, bool((mixed.compared >= objective_module.MIXED_REFINE).all())
        got, want = mixed.step(chosen, cand, maps=True), fp32.step(chosen, cand, maps=True)
        assert torch.equal(got.pick, want.pick) and torch.allclose(got.loss, want.loss, rtol=1e-6)
        assert torch.allclose(got.errors, want.errors, rtol=1e-5, atol=1e-7)
        if calibrated:  # the floor and the margin, not all six
            assert objective_module.MIXED_FLOOR * 3 <= mixed.refined - before < 3 * 6
            calibrated_steps += 1
        else:  # the first steps measure the error: all re-scored
            assert mixed.refined - before == 3 * 6
    assert calibrated_steps == 3
    assert mixed.evaluations.tolist() == [30] * 3  # a re-scored set counts once


def test_ranked_in_mixed_picks_as_in_float32_with_fewer_float32_passes(photos):
    model = load_mae("default")
    got = {}
    for prec in ("float32", "mixed"):
        proposer = get_proposer("ranked", precision=prec)
        objective = proposer.objective(model, photos)
        got[prec] = proposer.search(objective, 20, [0] * 3)[0], objective
    assert torch.equal(got["float32"][0], got["mixed"][0])
    mixed = got["mixed"][1]
    assert 0 < mixed.refined < 0.6 * int(mixed.evaluations.sum())  # steps and moves: float32 near the ties only


@pytest.mark.cuda
def test_ranked_on_cuda_picks_alike_alone_in_a_batch_and_in_mixed(photos):
    """On a GPU the ranker runs in groups (keypatch.ranker.ranking.GPU_GROUP) and mixed screens its
    candidates in bfloat16: each image's picks alone equal its picks in the batch, and float32's."""
    model = load_mae("default", device="cuda")
    x = photos.cuda()
    fp32, _, _ = get_proposer("ranked", precision="float32").select(model, x, 20, 0)
    mixed, _, _ = get_proposer("ranked", precision="mixed").select(model, x, 20, 0)
    assert torch.equal(mixed, fp32)
    for i in range(x.shape[0]):
        alone, _, _ = get_proposer("ranked", precision="float32").select(model, x[i : i + 1], 20, 0)
        assert torch.equal(alone[0], fp32[i])


def test_float32_convolutions_on_a_gpu_are_ieee_for_the_block_and_as_before_after():
    """cuDNN may run float32 convolutions in TF32 by default; the patch embedding and the ranker run
    under ieee_convolutions. The flags are only set (no GPU needed to check them)."""
    from keypatch.reconstructors.precision import ieee_convolutions

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    for setting in ("tf32", "ieee"):
        conv.fp32_precision = setting
        try:
            with ieee_convolutions(torch.device("cuda")):
                assert conv.fp32_precision == "ieee"
            assert conv.fp32_precision == setting
            with ieee_convolutions(torch.device("cpu")):
                assert conv.fp32_precision == setting  # nothing on other devices
        finally:
            conv.fp32_precision = before
    _ = torch.backends.cudnn.allow_tf32  # the legacy flag reads: no mix of the two APIs left behind
