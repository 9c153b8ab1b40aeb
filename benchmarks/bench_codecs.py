"""Bytes of a quantized dataset's kept patches, per codec: what --codec to choose.

For every image of one or more quantized datasets (``keypatch quantize`` folders), the kept
patches' mosaic and the whole image at the model's size are encoded with each codec; the table
gives the kept patches' bytes as a share of the whole image's in the same codec (the dataset's
keep ratio is what that share would be if every patch cost the same), the share of the original
files, and, for lossy codecs, the PSNR of the kept patches after decoding.

Run from the repository root::

    python benchmarks/bench_codecs.py q-attention q-screened q-random
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from keypatch.data import QuantizedFolder
from keypatch.data.codec import pack, parse_codec, patch_pixels, unpack
from keypatch.geometry.pixels import resized_rgb8

CODECS = ["png", "webp", "webp:90", "jpeg:90", "jpeg:75"]


def measure(folder: QuantizedFolder, codecs: list[str]) -> dict[str, dict[str, float]]:
    """Per codec: ``kept`` and ``whole`` bytes, ``files`` bytes and the kept patches' PSNR (dB)."""
    src = Path(folder.manifest["source"])
    p, cols = folder.patch_size, folder.manifest["grid_cols"]
    out = {c: {"kept": 0.0, "whole": 0.0, "files": 0.0, "sq_err": 0.0, "values": 0.0} for c in codecs}
    for e in folder.images:
        pixels = resized_rgb8(src / e["name"], folder.image_size)
        kept = patch_pixels(pixels, p)[np.sort(e["patches"])]
        mosaic = pack(kept, cols)
        for c in codecs:
            codec = parse_codec(c)
            data = codec.encode(mosaic)
            back = unpack(codec.decode(data), len(kept), p).astype(np.float64)
            o = out[c]
            o["kept"] += len(data)
            o["whole"] += len(codec.encode(pixels))
            o["files"] += (src / e["name"]).stat().st_size
            o["sq_err"] += float(((back - kept) ** 2).sum())
            o["values"] += kept.size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="keypatch quantize output folders")
    ap.add_argument("--codecs", nargs="+", default=CODECS)
    args = ap.parse_args()
    print("| dataset | strategy | keep | images | codec | kept / whole (same codec) | kept / files | PSNR kept (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    for d in args.datasets:
        folder = QuantizedFolder.open(d)
        m = folder.manifest
        for c, o in measure(folder, args.codecs).items():
            mse = o["sq_err"] / o["values"]
            psnr = "lossless" if mse == 0 else f"{10 * np.log10(255 ** 2 / mse):.1f}"
            print(f"| {d.name} | {m['strategy']} | {m['keep']:.2f} | {len(folder)} | {c} "
                  f"| {o['kept'] / o['whole']:.3f} | {o['kept'] / o['files']:.3f} | {psnr} |")


if __name__ == "__main__":
    main()
