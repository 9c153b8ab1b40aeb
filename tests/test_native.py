"""The optional native CPU kernels: same numbers as the torch code, same picks, clean fallback."""

import pytest
import torch

from keypatch.proposers import get_proposer
from keypatch.reconstructors import MAE, MAEConfig, load_mae, native

needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels {native.status()}")


def _model(embed: int = 64, heads: int = 2, dec: int = 64, dec_heads: int = 2, seed: int = 1) -> MAE:
    """224x224 geometry; head widths 32 so that both kernels apply."""
    m = MAE(MAEConfig(embed_dim=embed, depth=2, num_heads=heads, decoder_embed_dim=dec, decoder_depth=1,
                      decoder_num_heads=dec_heads))
    m.reset_parameters(seed=seed)
    with torch.no_grad():  # make the mask token and the decoder's biases matter
        m.mask_token.normal_(0, 0.5)
        m.decoder_pred.bias.normal_(0, 0.3)
        m.decoder_blocks[0].attn.qkv.bias.normal_(0, 0.2)
    return m.eval()


def _photos(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    small = torch.rand(n, 3, 14, 14, generator=g)
    return (torch.nn.functional.interpolate(small, size=224, mode="bilinear") - 0.45) / 0.25


def _both(model: MAE, images: torch.Tensor, sets: torch.Tensor, ii: torch.Tensor):
    with torch.no_grad():
        model.native_kernels = True
        ctx = model.loss_context(images)
        assert ctx.native and ctx.native_decoder is not None
        fast = model.context_losses(ctx, sets, ii)
        model.native_kernels = False
        ctx = model.loss_context(images)
        assert not ctx.native and ctx.native_decoder is None
        plain = model.context_losses(ctx, sets, ii)
        model.native_kernels = True
    return fast, plain


@needs_native
@pytest.mark.parametrize("k", [0, 1, 7, 8, 9, 40, 195])
def test_native_losses_equal_torch_losses(k):
    model = _model()
    x = _photos(2)
    g = torch.Generator().manual_seed(k)
    sets = torch.stack([torch.randperm(196, generator=g)[:k] for _ in range(21)])
    ii = torch.arange(21) % 2
    fast, plain = _both(model, x, sets, ii)
    assert torch.allclose(fast, plain, rtol=2e-6, atol=1e-7), (fast - plain).abs().max()
    if k < 195:
        assert fast.std() > 0  # the sets differ, so must their losses


@needs_native
def test_native_kernels_on_the_default_model_pick_like_torch():
    """Exact greedy picks the same patches with and without the kernels (the embedded model, real heads)."""
    model = load_mae("default", device="cpu")
    x = _photos(2)
    greedy = get_proposer("greedy")
    model.native_kernels = True
    a_patches, a_losses, _ = greedy.select(model, x, 8, 0)
    model.native_kernels = False
    try:
        b_patches, b_losses, _ = greedy.select(model, x, 8, 0)
    finally:
        model.native_kernels = True
    assert torch.equal(a_patches, b_patches)
    assert torch.allclose(a_losses, b_losses, rtol=2e-6)


@needs_native
@pytest.mark.parametrize("n", [1, 2, 9, 16, 33])
def test_encoder_attention_equals_torch_attention(n):
    model = _model(embed=96, heads=3)
    attn = model.blocks[0].attn
    qkv = torch.randn(5, n, 288, generator=torch.Generator().manual_seed(n)) * 2
    with torch.no_grad():
        ref = attn.mix(qkv).reshape(5 * n, 96)
    out = native.encoder_attention(qkv, 3)
    assert out.shape == (5 * n, 96)
    assert torch.allclose(out, ref, rtol=1e-5, atol=2e-6), (out - ref).abs().max()


@needs_native
def test_kernels_reject_bad_inputs():
    with pytest.raises(ValueError, match="multiple of 32"):
        native.encoder_attention(torch.randn(2, 3, 3 * 48), 3)  # head width 16
    with pytest.raises(ValueError, match="float32"):
        native.encoder_attention(torch.randn(2, 3, 3 * 64, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="out must be"):
        native.encoder_attention(torch.randn(2, 3, 3 * 64), 2, out=torch.empty(6, 63))


def test_disabled_kernels_fall_back_to_torch(monkeypatch):
    """KEYPATCH_NATIVE=0, or no usable compiler: nothing breaks, the torch code runs."""
    model = _model()
    x = _photos(1)
    sets = torch.tensor([[3, 50, 105], [0, 1, 2]])
    ii = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        model.native_kernels = False
        want = model.context_losses(model.loss_context(x), sets, ii)
        model.native_kernels = True
    try:
        monkeypatch.setenv("KEYPATCH_NATIVE", "0")
        native.library.cache_clear()
        assert not native.available()
        assert "KEYPATCH_NATIVE" in native.status()
        with torch.no_grad():
            ctx = model.loss_context(x)
            assert not ctx.native and ctx.native_decoder is None
            assert torch.equal(model.context_losses(ctx, sets, ii), want)
        with pytest.raises(RuntimeError, match="native kernels"):
            native.encoder_attention(torch.randn(1, 2, 192), 2)
    finally:
        monkeypatch.delenv("KEYPATCH_NATIVE")
        native.library.cache_clear()


def test_a_failing_compiler_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYPATCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.delenv("KEYPATCH_NATIVE", raising=False)
    native.library.cache_clear()
    try:
        assert not native.available()
        status = native.status()
        assert status.startswith(("unavailable", "no kernels")), status
        assert not list((tmp_path / "native").glob("*.so"))  # no half-written library left behind
    finally:
        native.library.cache_clear()


@needs_native
def test_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KEYPATCH_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.available()
        built = list((tmp_path / "native").glob("attention-*.so"))
        assert len(built) == 1 and str(built[0]) in native.status()
        mtime = built[0].stat().st_mtime_ns
        native.library.cache_clear()
        assert native.available()
        assert built[0].stat().st_mtime_ns == mtime  # loaded, not rebuilt
    finally:
        native.library.cache_clear()


def test_cpu_flags_parse_the_kernel_line(monkeypatch):
    monkeypatch.setattr(native, "_cpu_signature", lambda: "flags\t\t: fpu sse2 avx2 avx512_bf16")
    assert native.cpu_flags() == frozenset({"fpu", "sse2", "avx2", "avx512_bf16"})
    monkeypatch.setattr(native, "_cpu_signature", lambda: "x86_64")  # no /proc/cpuinfo
    assert native.cpu_flags() == frozenset()
