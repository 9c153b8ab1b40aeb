"""The reconstructor: parity with Hugging Face, checkpoint layouts, the loss, reconstruction."""

import pytest
import torch

from keypatch.objective import losses as set_losses
from keypatch.reconstructors import MAE, MAEConfig, load_mae, save_mae
from keypatch.reconstructors.config import ARCHITECTURES
from keypatch.reconstructors.convert import config_to_hf, hf_to_keypatch
from keypatch.reconstructors.mae import SHORT_SEQUENCE, Attention

transformers = pytest.importorskip("transformers")

CFG = MAEConfig(image_size=64, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=2,
                decoder_num_heads=4, layer_norm_eps=1e-12)


def _hf_model(k: int):
    hf_cfg = transformers.ViTMAEConfig(**config_to_hf(CFG))
    hf_cfg.mask_ratio = 1 - k / CFG.grid.n
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(hf_cfg).eval()
    with torch.no_grad():  # HF initialises the mask token to zeros; make the test sensitive to it
        model.decoder.mask_token.normal_(0, 0.5)
        model.vit.embeddings.cls_token.normal_(0, 0.5)
    return model


def test_predictions_match_transformers_vitmae():
    k = 5
    hf = _hf_model(k)
    ours = MAE(CFG)
    ours.load_state_dict(hf_to_keypatch(hf.state_dict()))
    ours.eval()
    x = torch.randn(3, 3, 64, 64)
    visible = torch.stack([torch.randperm(16)[:k] for _ in range(3)])
    noise = torch.ones(3, 16).scatter_(1, visible, 0.0)  # HF keeps the lowest noise
    with torch.no_grad():
        out = hf(pixel_values=x, noise=noise)
        pred = ours.predict_tokens(ours.embed(x), visible, torch.arange(3))
    masked = out.mask.bool()
    assert masked.sum() == 3 * (16 - k)
    assert (out.logits[masked] - pred[masked]).abs().max().item() < 1e-4
    # HF's loss (norm_pix_loss off, mean over masked patches) is our L
    assert set_losses(ours, x, visible, torch.arange(3)).mean().item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_hf_folder_and_official_layout_load_to_the_same_model(tmp_path):
    hf = _hf_model(4)
    hf.save_pretrained(tmp_path / "hf")
    from_hf = load_mae(tmp_path / "hf", device="cpu")
    assert from_hf.config.layer_norm_eps == 1e-12 and from_hf.config.num_heads == 4
    # official layout: {"model": state_dict} with blocks.N.attn.qkv... keys, written by torch.save
    torch.save({"model": from_hf.state_dict(), "epoch": 1}, tmp_path / "mae_visualize_vit_toy.pth")
    official = load_mae(tmp_path / "mae_visualize_vit_toy.pth", device="cpu")
    x = torch.randn(2, 3, 64, 64)
    vis = torch.tensor([[0, 5, 9], [1, 2, 3]])
    ref = set_losses(from_hf, x, vis, torch.arange(2))
    # official checkpoints use eps 1e-6 (inferred): outputs agree to LayerNorm-eps precision
    assert torch.allclose(set_losses(official, x, vis, torch.arange(2)), ref, atol=1e-4)
    assert set(official.state_dict()) == set(from_hf.state_dict())


def test_safetensors_roundtrip(tmp_path, toy_model):
    path = save_mae(toy_model, tmp_path / "m.safetensors")
    again = load_mae(path, device="cpu")
    assert again.config == toy_model.config
    for k, v in toy_model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_encoder_only_checkpoint_is_a_clear_error(tmp_path, toy_model):
    sd = {k: v for k, v in toy_model.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": sd}, tmp_path / "mae_pretrain_vit_toy.pth")
    with pytest.raises(ValueError, match="decoder_pred.weight.*encoder-only"):
        load_mae(tmp_path / "mae_pretrain_vit_toy.pth")


def test_not_an_mae_is_a_clear_error(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="missing .*patch_embed.proj.weight"):
        load_mae(tmp_path / "resnet.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown weights format"):
        load_mae(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        load_mae(tmp_path / "nothing.pth")


class Evil:
    """Any pickled object that is not a tensor."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="loaded safely"):
        load_mae(tmp_path / "evil.pth")


def test_batched_losses_equal_one_at_a_time(toy_model, toy_image):
    x = torch.stack([toy_image, toy_image.flip(-1)])
    sets = torch.tensor([[0, 1, 2], [5, 6, 15], [3, 7, 11], [10, 4, 0]])
    ii = torch.tensor([0, 1, 1, 0])
    batched = set_losses(toy_model, x, sets, ii, chunk_size=3)
    single = torch.stack([set_losses(toy_model, x[i], s[None]) for s, i in zip(sets, ii, strict=True)]).squeeze(1)
    assert torch.allclose(batched, single, atol=1e-6)
    # order of the visible set does not matter
    assert torch.allclose(set_losses(toy_model, x[0], sets[:1].flip(1)), batched[:1], atol=1e-6)


def test_loss_is_masked_mse_against_normalised_pixels(toy_model, toy_image):
    from keypatch.geometry import patchify

    vis = [0, 6, 9]
    recon = toy_model.reconstruct(toy_image, vis, paste_visible=False)
    err = (patchify(recon[None], 16) - patchify(toy_image[None], 16)).pow(2).mean(-1)[0]
    masked = [i for i in range(16) if i not in vis]
    got = set_losses(toy_model, toy_image, torch.tensor([vis])).item()
    assert got == pytest.approx(err[masked].mean().item(), rel=1e-5)
    pasted = toy_model.reconstruct(toy_image, vis)
    assert torch.allclose(patchify(pasted[None], 16)[0, vis], patchify(toy_image[None], 16)[0, vis])
    assert set_losses(toy_model, toy_image, torch.arange(16)[None]).item() == 0.0


def test_bad_inputs(toy_model, toy_image):
    with pytest.raises(ValueError, match="patch indices"):
        set_losses(toy_model, toy_image, torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match="images must be"):
        set_losses(toy_model, torch.zeros(1, 3, 32, 32), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="unknown architecture"):
        load_mae("random:nope")


@pytest.mark.cuda
def test_cuda_matches_cpu(toy_model, toy_image):
    sets = torch.tensor([[0, 1, 2], [5, 6, 15]])
    cpu = set_losses(toy_model, toy_image, sets)
    gpu = set_losses(load_mae(toy_model, device="cuda"), toy_image.cuda(), sets.cuda()).cpu()
    toy_model.to("cpu")
    assert torch.allclose(cpu, gpu, atol=1e-4)


@pytest.mark.parametrize("tokens", [5, SHORT_SEQUENCE, SHORT_SEQUENCE + 1, 150])
def test_attention_paths_agree_with_the_textbook_formula(tokens):
    """Short CPU sequences take the two-matmul path, long ones the fused kernel: both are softmax attention."""
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(3, tokens, 32)
    with torch.no_grad():
        q, k, v = attn.qkv(x).view(3, tokens, 3, 4, 8).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
        want = attn.proj((w @ v).transpose(1, 2).reshape(3, tokens, 32))
        assert torch.allclose(attn(x), want, atol=1e-5)


def _official_keys(depth: int, decoder_depth: int) -> set[str]:
    """The state-dict keys of facebookresearch/mae's ``MaskedAutoencoderViT``, spelt out independently."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight",
            "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    keys |= {f"blocks.{i}.{k}" for i in range(depth) for k in block}
    return keys | {f"decoder_blocks.{i}.{k}" for i in range(decoder_depth) for k in block}


def test_the_vit_large_ganloss_checkpoint_layout_dq_uses_loads(tmp_path):
    """DQ reconstructs with mae_visualize_vit_large_ganloss.pth: {"model": ...} in the official ViT-L layout."""
    source = load_mae("random:large:3", device="cpu")
    sd = source.state_dict()
    assert set(sd) == _official_keys(24, 8)
    torch.save({"model": sd}, tmp_path / "mae_visualize_vit_large_ganloss.pth")
    del sd
    loaded = load_mae(tmp_path / "mae_visualize_vit_large_ganloss.pth", device="cpu")
    assert loaded.config == ARCHITECTURES["large"]
    x = torch.randn(1, 3, 224, 224)
    vis = torch.tensor([[0, 17, 98, 195]])
    assert torch.equal(set_losses(loaded, x, vis, torch.tensor([0])), set_losses(source, x, vis, torch.tensor([0])))
