"""State-dict conversion between the official MAE, Hugging Face ``ViTMAE`` and keypatch layouts.

keypatch's names are the official ones, so an official checkpoint needs no renaming. Hugging Face
splits q/k/v and names everything differently; its key spellings are all understood: the hub's
(``vit.encoder.layer.N.attention.attention.query``, ``decoder.decoder_layers.N...``), transformers 5
in memory (``vit.layers.N.attention.q_proj``) and transformers 5 ``save_pretrained``
(``decoder.decoder_encoder.layer.N...``).
"""

from __future__ import annotations

import re

import torch

from keypatch.reconstructors.config import MAEConfig

_HF_BLOCK = {
    # new-style (transformers >= 5) and old-style (hub files) suffixes -> ours
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_QKV = {
    "attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2,
    "attention.attention.query": 0, "attention.attention.key": 1, "attention.attention.value": 2,
}
_HF_FLAT = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "vit.layernorm.weight": "norm.weight",
    "vit.layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
_HF_LAYER = re.compile(
    r"^(vit\.layers|vit\.encoder\.layer|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)\.(\d+)\.(.+)\.(weight|bias)$"
)


def is_hf_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """Whether ``sd`` uses Hugging Face ``ViTMAEForPreTraining`` names."""
    return any(k.startswith("vit.embeddings.") for k in sd)


def hf_to_keypatch(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``ViTMAEForPreTraining`` state dict to keypatch's (official) names."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, int, str], list[torch.Tensor | None]] = {}
    for key, value in sd.items():
        if key in _HF_FLAT:
            out[_HF_FLAT[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if not m:
            continue  # e.g. position_ids buffers
        stack, idx, suffix, kind = m.groups()
        prefix = "decoder_blocks" if stack.startswith("decoder") else "blocks"
        if suffix in _HF_QKV:
            qkv.setdefault((prefix, int(idx), kind), [None, None, None])[_HF_QKV[suffix]] = value
        elif suffix in _HF_BLOCK:
            out[f"{prefix}.{idx}.{_HF_BLOCK[suffix]}.{kind}"] = value
    for (prefix, idx, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise KeyError(f"{prefix} {idx}: q, k and v {kind} are not all present")
        out[f"{prefix}.{idx}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
    return out


def config_from_hf(hf: dict) -> MAEConfig:
    """Translate a Hugging Face ``ViTMAEConfig`` dict (config.json) to :class:`MAEConfig`."""
    hidden = hf.get("hidden_size", 768)
    return MAEConfig(
        image_size=hf.get("image_size", 224),
        patch_size=hf.get("patch_size", 16),
        in_chans=hf.get("num_channels", 3),
        embed_dim=hidden,
        depth=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        decoder_embed_dim=hf.get("decoder_hidden_size", 512),
        decoder_depth=hf.get("decoder_num_hidden_layers", 8),
        decoder_num_heads=hf.get("decoder_num_attention_heads", 16),
        mlp_ratio=hf.get("intermediate_size", 4 * hidden) / hidden,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        qkv_bias=hf.get("qkv_bias", True),
    )


def config_to_hf(config: MAEConfig) -> dict:
    """The Hugging Face ``ViTMAEConfig`` keyword arguments for ``config``."""
    return dict(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.in_chans,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=int(config.embed_dim * config.mlp_ratio),
        decoder_hidden_size=config.decoder_embed_dim,
        decoder_num_hidden_layers=config.decoder_depth,
        decoder_num_attention_heads=config.decoder_num_heads,
        decoder_intermediate_size=int(config.decoder_embed_dim * config.mlp_ratio),
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias=config.qkv_bias,
        norm_pix_loss=False,
    )


def _heads(width: int) -> int:
    # official MAE: ViT-B 12 heads, ViT-L/H 16 heads, decoder 512 -> 16 heads; else 64-wide heads
    return {768: 12, 1024: 16, 1280: 16, 512: 16}.get(width, max(1, width // 64))


def infer_config(sd: dict[str, torch.Tensor], layer_norm_eps: float = 1e-6) -> MAEConfig:
    """Infer the architecture of an official-layout state dict from its tensor shapes.

    Head counts are not stored in a checkpoint: the official ones are assumed (12 for width 768,
    16 for 1024/1280 and for the 512-wide decoder, else 64-wide heads).
    """
    require(sd, ["patch_embed.proj.weight", "pos_embed", "decoder_pred.weight", "decoder_embed.weight"])
    w = sd["patch_embed.proj.weight"]
    dim, in_chans, patch = w.shape[0], w.shape[1], w.shape[2]
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
    ddim = sd["decoder_embed.weight"].shape[0]

    def count(prefix: str) -> int:
        return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})

    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    return MAEConfig(
        image_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=dim,
        depth=count("blocks"),
        num_heads=_heads(dim),
        decoder_embed_dim=ddim,
        decoder_depth=count("decoder_blocks"),
        decoder_num_heads=_heads(ddim),
        mlp_ratio=(fc1.shape[0] / dim) if fc1 is not None else 4.0,
        layer_norm_eps=layer_norm_eps,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )


def require(sd: dict[str, torch.Tensor], keys: list[str], what: str = "an MAE with a decoder") -> None:
    """Raise a ``ValueError`` naming the keys of ``keys`` missing from ``sd``."""
    missing = [k for k in keys if k not in sd]
    if missing:
        hint = ""
        if "decoder_pred.weight" in missing and "patch_embed.proj.weight" in sd:
            hint = (" This looks like an encoder-only checkpoint (e.g. mae_pretrain_vit_*.pth); KPP needs the"
                    " decoder: use mae_visualize_vit_*.pth.")
        raise ValueError(f"not {what}: missing {', '.join(missing)}.{hint}")
