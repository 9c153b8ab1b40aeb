"""``load_mae(spec)``: one entry point for every source of MAE weights.

Specs
-----
``"default"``
    The small MAE shipped inside the package (trained offline on real photos; see its model card).
    Its ``model_id`` is ``"default@<sha8>"`` (the weights' hash); that spec loads it too, and fails
    if the package holds other weights.
``"random:NAME"`` / ``"random:NAME:SEED"``
    An architecture of :data:`~keypatch.reconstructors.config.ARCHITECTURES` (``toy``, ``small``,
    ``base``, ``large``, ``huge``) with seeded random weights: for tests and speed measurements
    (the cost does not depend on the weights).
a ``.pth`` / ``.pt`` / ``.bin`` file
    An official facebookresearch/mae checkpoint (``mae_visualize_vit_base.pth``: a dict whose
    ``"model"`` holds the state dict) or a Hugging Face ``pytorch_model.bin``; loaded with
    ``torch.load(weights_only=True)``.
a ``.safetensors`` file
    keypatch's own (``NAME.json`` beside it holds the :class:`MAEConfig`) or Hugging Face's
    (``config.json`` beside it).
a folder
    A Hugging Face model folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``),
    or a keypatch one (``mae.json`` + ``mae.safetensors``).
a hub id such as ``"facebook/vit-mae-base"``
    Downloaded once through ``huggingface_hub`` into its cache (needs the network and the ``hub`` extra).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from keypatch.reconstructors.config import ARCHITECTURES, MAEConfig
from keypatch.reconstructors.convert import (
    config_from_hf,
    hf_to_keypatch,
    infer_config,
    is_hf_state_dict,
    require,
)
from keypatch.reconstructors.mae import MAE

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "default.safetensors"
DEFAULT_CONFIG = WEIGHTS_DIR / "default.json"


@functools.lru_cache(maxsize=1)
def default_model_id() -> str:
    """``"default@"`` + the first 8 hex digits of the embedded weights' sha256.

    Results stored with one version of the embedded model are not reused with another.
    """
    import hashlib

    return "default@" + hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()[:8]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as given (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is available")
    return dev


def build_mae(config: MAEConfig, state_dict: dict[str, torch.Tensor] | None, model_id: str) -> MAE:
    """Make an :class:`MAE` from ``config`` and (optionally) a keypatch-layout state dict."""
    model = MAE(config)
    if state_dict is not None:
        expected = list(model.state_dict())
        require(state_dict, expected)
        sd = {k: v.float() for k, v in state_dict.items() if k in set(expected)}
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights do not fit the architecture {config}: {exc}") from exc
    model.model_id = model_id
    return model.eval()


def save_mae(model: MAE, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Save ``model`` as ``path`` (.safetensors) and its config as ``path.with_suffix('.json')``."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "keypatch-mae"})
    model.config.to_json(path.with_suffix(".json"))
    return path


def _from_state_dict(sd: dict, model_id: str, hf_config: dict | None = None) -> MAE:
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{model_id}: not a state dict of tensors")
    if is_hf_state_dict(sd):
        sd = hf_to_keypatch(sd)
        config = config_from_hf(hf_config) if hf_config else infer_config(sd, layer_norm_eps=1e-12)
    else:
        config = infer_config(sd)
    return build_mae(config, sd, model_id)


def _load_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} could not be loaded safely as a torch checkpoint: {exc}") from exc


def _load_file(path: Path) -> MAE:
    if path.suffix == ".safetensors":
        sd = load_file(str(path))
        ours = path.with_suffix(".json")
        if ours.is_file():
            return build_mae(MAEConfig.from_json(ours), sd, str(path))
        hf_cfg = path.parent / "config.json"
        return _from_state_dict(sd, str(path), json.loads(hf_cfg.read_text()) if hf_cfg.is_file() else None)
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        hf_cfg = path.parent / "config.json"
        cfg = json.loads(hf_cfg.read_text()) if hf_cfg.is_file() else None
        return _from_state_dict(_load_torch(path), str(path), cfg)
    raise ValueError(f"{path}: unknown weights format (expected .safetensors, .pth, .pt or .bin)")


def _load_folder(folder: Path, model_id: str) -> MAE:
    if (folder / "mae.safetensors").is_file():
        return _load_file(folder / "mae.safetensors")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{folder}: no config.json (Hugging Face) or mae.safetensors (keypatch) in it")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type", "vit_mae") != "vit_mae":
        raise ValueError(f"{folder}: config.json is for model_type {cfg.get('model_type')!r}, not vit_mae")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            f = folder / name
            sd = load_file(str(f)) if f.suffix == ".safetensors" else _load_torch(f)
            return _from_state_dict(sd, model_id, cfg)
    raise ValueError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _load_hub(repo_id: str) -> MAE:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("loading from the hub needs huggingface_hub: pip install 'keypatch[hub]'") from exc
    try:
        folder = snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"])
    except Exception as exc:
        raise RuntimeError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Offline? Download it elsewhere and pass the folder, or use load_mae('default')."
        ) from exc
    return _load_folder(Path(folder), repo_id)


def load_mae(spec: str | Path | MAE = "default", device: str | torch.device = "auto") -> MAE:
    """Load an MAE reconstructor (see the module docstring for every ``spec``).

    Parameters
    ----------
    spec : str, Path or MAE
        ``"default"``, ``"random:NAME[:SEED]"``, a file, a folder, or a hub id. An :class:`MAE` is
        returned as is (moved to ``device``).
    device : str
        ``"auto"`` (cuda if present), ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    MAE
        In eval mode, on ``device``, float32.

    Raises
    ------
    ValueError
        If the weights are not an MAE with a decoder (the message names what is missing).
    FileNotFoundError
        If ``spec`` looks like a path and nothing is there.
    """
    dev = resolve_device(device)
    if isinstance(spec, MAE):
        return spec.to(dev).eval()
    text = str(spec)
    if text == "default" or text.startswith("default@"):
        if not DEFAULT_WEIGHTS.is_file():
            raise FileNotFoundError(f"the embedded default model is missing from {WEIGHTS_DIR}")
        model_id = default_model_id()
        if text != "default" and text != model_id:
            raise ValueError(f"{text!r} names another version of the embedded model than this one ({model_id})")
        model = build_mae(MAEConfig.from_json(DEFAULT_CONFIG), load_file(str(DEFAULT_WEIGHTS)), model_id)
    elif text.startswith("random:"):
        parts = text.split(":")
        if parts[1] not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {parts[1]!r}; choose from {sorted(ARCHITECTURES)}")
        model = MAE(ARCHITECTURES[parts[1]])
        model.reset_parameters(seed=int(parts[2]) if len(parts) > 2 else 0)
        model.model_id = text
        model.eval()
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            model = _load_folder(path.resolve(), str(path.resolve()))
        elif path.is_file():
            model = _load_file(path.resolve())
        elif text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix:
            model = _load_hub(text)
        else:
            raise FileNotFoundError(f"no MAE weights at {text!r} (not a file, folder, hub id or 'default')")
    return model.to(dev)
