"""Classifier registry, input conversion, real ImageNet weights, and GradCAM++ golden checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from keypatch.cams import GradCAMPlusPlus, classifier_cam, gradcampp_map, gradcampp_weights, normalize_maps
from keypatch.classifiers import Classifier, available_classifiers, get_classifier
from keypatch.geometry.image import normalize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def effnet() -> Classifier:
    return get_classifier("efficientnet-lite0", device="cpu")


def _photo(name: str) -> torch.Tensor:
    data = pytest.importorskip("skimage.data")
    return torch.from_numpy(getattr(data, name)().astype(np.float32) / 255.0).permute(2, 0, 1)


def test_registry():
    assert {"efficientnet-lite0", "resnet18"} <= set(available_classifiers())
    with pytest.raises(ValueError, match="unknown classifier"):
        get_classifier("nope")


def test_real_weights_give_right_imagenet_classes(effnet):
    # coffee 400x600 and chelsea 300x451, each resized whole to 224 by preprocess
    x = torch.cat([effnet.preprocess(_photo("coffee")[None]), effnet.preprocess(_photo("chelsea")[None])])
    coffee, chelsea = effnet.forward(x)[0].argmax(1).tolist()
    assert coffee == 967  # espresso
    assert 281 <= chelsea <= 285  # a domestic cat


def test_input_conversion(effnet):
    rgb = torch.rand(1, 3, 64, 64)
    x = effnet.from_mae(normalize(rgb))  # the MAE's ImageNet-normalised input at 64 px
    assert x.shape == (1, 3, 224, 224)
    assert x.min() >= -1.0 - 1e-5 and x.max() <= 1.0 + 1e-5  # (x - 0.5) / 0.5
    assert torch.allclose(x, effnet.preprocess(rgb), atol=1e-5)
    with torch.no_grad():
        logits, pooled = effnet.forward(x)
        assert torch.allclose(effnet.model(x), logits, atol=1e-4)  # same as the package's own forward
    assert logits.shape == (1, 1000) and pooled.shape == (1, 1280)
    assert effnet.target_layer is effnet.model._conv_head


def test_resnet18_needs_torchvision():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="torchvision"):
            get_classifier("resnet18")
    else:  # pragma: no cover - environment with torchvision
        pytest.skip("torchvision is installed")


def test_gradcampp_weights_hand_computed():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]]]])  # sum A = 6
    g = torch.tensor([[[[1.0, -1.0], [0.5, 0.0]]]])
    # alpha = g^2 / (2 g^2 + 6 g^3): 1/8, -1/4, 0.25/1.25, 0 (g = 0); weights: alpha * relu(g)
    w = gradcampp_weights(a, g)
    assert w.shape == (1, 1)
    assert w.item() == pytest.approx(0.125 * 1 + 0.2 * 0.5)
    assert torch.allclose(gradcampp_map(a, g), 0.225 * a[:, 0])


def _toy_cnn() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    return model, model[3]


def test_gradcampp_matches_formula_and_is_per_image():
    model, layer = _toy_cnn()
    x = torch.randn(3, 3, 8, 8)
    res = GradCAMPlusPlus(model, layer)(x)
    assert res.maps.shape == (3, 8, 8) and (res.maps >= 0).all()
    assert torch.equal(res.classes, model(x).argmax(1))
    # reference: explicit gradients of the same scores
    acts = model[:4](x).detach().requires_grad_(True)
    scores = model[4:](acts).gather(1, res.classes[:, None]).sum()
    (g,) = torch.autograd.grad(scores, acts)
    assert torch.allclose(res.maps, gradcampp_map(acts.detach(), g), atol=1e-6)
    # one image alone gives the same map as inside the batch
    one = GradCAMPlusPlus(model, layer)(x[1:2])
    assert torch.allclose(one.maps[0], res.maps[1], atol=1e-6)
    # an explicit class, and no hooks left behind
    forced = GradCAMPlusPlus(model, layer)(x, class_idx=2)
    assert (forced.classes == 2).all()
    assert not layer._forward_hooks


def test_gradcampp_single_channel_is_its_activation():
    # score = w * mean(A_0): every gradient is w / (h w) > 0, so the map is proportional to A_0
    conv = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2)).eval()
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[2.0], [-1.0]]))
        model[3].bias.zero_()
    x = torch.zeros(1, 3, 6, 6)
    x[0, 0, 1:3, 2:5] = 1.0
    x[0, 0, 4, 4] = 0.5
    res = GradCAMPlusPlus(model, conv)(x)
    assert res.classes.item() == 0
    assert torch.allclose(normalize_maps(res.maps), x[:, 0], atol=1e-6)


def test_target_layer_running_twice_is_an_error():
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 2, 1), act, nn.Conv2d(2, 2, 1), act, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(RuntimeError, match="2 times"):
        GradCAMPlusPlus(model, act)(torch.randn(1, 3, 4, 4))


def test_effnet_cam_on_coffee(effnet):
    res = classifier_cam(effnet, effnet.preprocess(_photo("coffee")[None]))
    assert res.maps.shape == (1, 7, 7)
    assert res.classes.item() == 967
    m = normalize_maps(res.maps)[0]
    # the cup fills the upper middle of the photo: the peak is not on the border
    r, c = divmod(int(m.argmax()), 7)
    assert 1 <= r <= 4 and 1 <= c <= 5
