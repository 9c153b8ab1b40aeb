"""Architecture of a ViT masked autoencoder, and the named presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from keypatch.geometry import PatchGrid


@dataclass(frozen=True)
class MAEConfig:
    """Shape of a ViT MAE (encoder on visible tokens, decoder on all positions).

    Parameters
    ----------
    image_size, patch_size : int
        Input side and patch side in pixels (224 and 16 give the paper's 14x14 grid).
    embed_dim, depth, num_heads : int
        Encoder width, number of blocks and attention heads.
    decoder_embed_dim, decoder_depth, decoder_num_heads : int
        The same for the decoder.
    mlp_ratio : float
        MLP hidden width over block width (encoder and decoder).
    layer_norm_eps : float
        1e-6 in the official MAE, 1e-12 in Hugging Face's ``ViTMAE``.
    qkv_bias : bool
        Whether the attention projections have a bias.
    """

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True

    @property
    def grid(self) -> PatchGrid:
        """The patch grid this model works on."""
        return PatchGrid(self.image_size, self.patch_size)

    @property
    def patch_dim(self) -> int:
        """Values per patch: ``patch_size**2 * in_chans``."""
        return self.patch_size**2 * self.in_chans

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MAEConfig:
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> MAEConfig:
        """Read a config written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path) -> None:
        """Write this config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


ARCHITECTURES: dict[str, MAEConfig] = {
    # official facebookresearch/mae sizes (mae_visualize_vit_*.pth)
    "base": MAEConfig(),
    "large": MAEConfig(embed_dim=1024, depth=24, num_heads=16),
    "huge": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # the embedded default: small enough that exact KPP runs in seconds on a 2-core CPU
    "small": MAEConfig(
        embed_dim=192, depth=6, num_heads=3, decoder_embed_dim=128, decoder_depth=1, decoder_num_heads=4
    ),
    # a toy for tests: 64x64 images, 4x4 grid
    "toy": MAEConfig(
        image_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
        decoder_num_heads=2,
    ),
}
"""Named architectures. ``huge`` uses 14x14-pixel patches on a 16x16 grid, as the official ViT-H."""
