"""The registered methods' formulas on tiny networks with set weights, checked against
hand-computed values, captum and each other (through the per-image references in oracles.py)."""
import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

from oracles import ImageExplainer, TopK, resolve_targets


def tiny_net() -> nn.Sequential:
    """x (1,1,2,2) -> conv 1x1 [1, -1] -> relu -> GAP -> fc W = [[1, 2], [-1, 1]]."""
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(1, 2, 1, bias=False))
    net.add_module("relu", nn.ReLU())
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net.conv.weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
        net.fc.weight[:] = torch.tensor([[1.0, 2.0], [-1.0, 1.0]])
    return net


X = torch.tensor([[[[1.0, 2.0], [3.0, -1.0]]]])
# At "conv", class 0: A0 = x, A1 = -x; score = mean(relu A0) + 2 mean(relu A1), so
# G0 = 1/4 where x > 0, G1 = 1/2 where x < 0 (only at (1, 1)), 0 elsewhere.


def test_targets_resolve_to_one_class_per_image():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]])
    assert resolve_targets(logits, None).tolist() == [[1], [0]]
    assert resolve_targets(logits, 2).tolist() == [[2], [2]]
    assert resolve_targets(logits, [2, 1]).tolist() == [[2], [1]]
    assert resolve_targets(logits, TopK(2)).tolist() == [[1, 2], [0, 2]]
    with pytest.raises(ValueError, match="one target"):
        resolve_targets(logits, [1, 2, 0])                  # wrong length: refused, not truncated
    with pytest.raises(ValueError, match="one target"):
        resolve_targets(logits, [1])
    with pytest.raises(ValueError, match="out of range"):
        resolve_targets(logits, 3)


def test_gradcam_hand_computed():
    # α = (mean G0, mean G1) = (3/16, 1/8); map = relu(3/16 x - 1/8 x) = relu(x / 16)
    maps = ImageExplainer(tiny_net(), "gradcam", "conv")(X, target=0).maps
    torch.testing.assert_close(maps[0, 0], torch.tensor([[1 / 16, 2 / 16], [3 / 16, 0.0]]))


def test_hirescam_hand_computed():
    # map = relu(G0 ⊙ x - G1 ⊙ x) = [[1/4, 1/2], [3/4, 0]] + [[0, 0], [0, 1/2]]
    maps = ImageExplainer(tiny_net(), "hirescam", "conv")(X, target=0).maps
    torch.testing.assert_close(maps[0, 0], torch.tensor([[0.25, 0.5], [0.75, 0.5]]))


def test_gradcampp_hand_computed():
    # ΣA0 = 5, ΣA1 = -5. Channel 0 where G = 1/4: a = (1/16) / (2/16 + 5/64) = 4/13, α0 = 3 · 4/13 · 1/4 = 3/13.
    # Channel 1 where G = 1/2: a = (1/4) / (1/2 - 5/8) = -2, α1 = -2 · 1/2 = -1.
    # map = relu(3/13 x + (-1)(-x)) = relu(16/13 x)
    maps = ImageExplainer(tiny_net(), "gradcampp", "conv")(X, target=0).maps
    torch.testing.assert_close(maps[0, 0], torch.tensor([[16 / 13, 32 / 13], [48 / 13, 0.0]]))


def test_cam_equals_gradcam_times_area_after_global_pooling():
    # at "relu", the net is GAP + linear: CAM α = W[0] = (1, 2), Grad-CAM α = W[0] / 4
    net = tiny_net()
    cam = ImageExplainer(net, "cam", "relu", fc="fc")(X, target=0).maps
    torch.testing.assert_close(cam[0, 0], torch.tensor([[1.0, 2.0], [3.0, 2.0]]))
    torch.testing.assert_close(cam, 4 * ImageExplainer(net, "gradcam", "relu")(X, target=0).maps)
    torch.manual_seed(0)
    big = conv_net()
    images = torch.randn(3, 3, 16, 16)
    cam = ImageExplainer(big, "cam", "act2", fc="fc")(images, target=TopK(2))
    grad = ImageExplainer(big, "gradcam", "act2")(images, target=TopK(2))
    torch.testing.assert_close(cam.maps, 64 * grad.maps, rtol=1e-4, atol=1e-6)


def conv_net() -> nn.Sequential:
    net = nn.Sequential()
    for name, module in [("conv1", nn.Conv2d(3, 6, 3, padding=1)), ("bn", nn.BatchNorm2d(6)), ("act1", nn.ReLU()),
                         ("down", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(6, 8, 3, padding=1)), ("act2", nn.ReLU()),
                         ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(8, 4))]:
        net.add_module(name, module)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def test_gradcam_equals_captum_layer_gradcam():
    torch.manual_seed(1)
    net = conv_net().eval()
    images = torch.randn(4, 3, 16, 16)
    targets = [0, 3, 1, 2]
    ours = ImageExplainer(net, "gradcam", "conv2")(images, target=targets).maps
    theirs = LayerGradCam(net, net.conv2).attribute(images, target=targets, relu_attributions=True)
    assert float(theirs.detach().abs().max()) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "hirescam"])
def test_maps_do_not_depend_on_the_rest_of_the_batch(name):
    torch.manual_seed(2)
    net = conv_net().train()      # batch norm in training mode would mix the batch; eval must be used
    images = torch.randn(5, 3, 16, 16)
    together = ImageExplainer(net, name, "conv2")(images, target=[1, 0, 2, 3, 1]).maps
    alone = torch.cat([ImageExplainer(net, name, "conv2")(images[i:i + 1], target=[t]).maps
                       for i, t in enumerate([1, 0, 2, 3, 1])])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-7)


def test_topk_targets_match_single_targets():
    torch.manual_seed(3)
    net = conv_net()
    images = torch.randn(3, 3, 16, 16)
    top = ImageExplainer(net, "gradcam", "conv2")(images, target=TopK(2))
    second = ImageExplainer(net, "gradcam", "conv2")(images, target=top.classes[:, 1].tolist())
    torch.testing.assert_close(top.maps[:, 1:], second.maps)
    assert (top.logits.gather(1, top.classes[:, :1]) >= top.logits.gather(1, top.classes[:, 1:])).all()


def guided_net(inplace: bool) -> nn.Sequential:
    """x (1,1,1,2) -> W1 -> relu -> W2 -> relu -> W3 (one output)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False), nn.ReLU(inplace=inplace),
                        nn.Linear(2, 3, bias=False), nn.ReLU(inplace=inplace), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[1].weight[:] = torch.tensor([[2.0, -1.0], [1.0, 1.0]])
        net[3].weight[:] = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
        net[5].weight[:] = torch.tensor([[1.0, -2.0, 1.0]])
    return net


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_backprop_zeroes_negative_gradients_at_every_relu(inplace):
    # x = (1, 1): z1 = (1, 2) (both active), z2 = (-1, 1, 3) (first inactive).
    # Plain gradient: W3 ⊙ [0,1,1] = (0, -2, 1) -> W2^T -> (3, -1) -> W1^T -> (5, -4).
    # Guided: relu(1, -2, 1) ⊙ [0,1,1] = (0, 0, 1) -> W2^T -> (1, 1), relu -> (1, 1) -> W1^T -> (3, 0).
    net = guided_net(inplace)
    x = torch.tensor([[[[1.0, 1.0]]]])
    plain = torch.autograd.functional.jacobian(lambda v: net(v).sum(), x)
    torch.testing.assert_close(plain.flatten(), torch.tensor([5.0, -4.0]))
    maps = ImageExplainer(net, "guided_backprop")(x, target=0).maps
    torch.testing.assert_close(maps.flatten(), torch.tensor([3.0, 0.0]))


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam():
    torch.manual_seed(4)
    net = conv_net()
    images = torch.randn(2, 3, 16, 16)
    combined = ImageExplainer(net, "guided_gradcam", "conv2")(images, target=1).maps
    guided = ImageExplainer(net, "guided_backprop")(images, target=1).maps
    cam = ImageExplainer(net, "gradcam", "conv2")(images, target=1).maps
    expected = guided * torch.nn.functional.interpolate(cam, size=(16, 16), mode="bilinear")
    assert combined.shape == (2, 1, 16, 16)
    torch.testing.assert_close(combined, expected)


def test_occlusion_of_a_linear_model_is_each_windows_contribution():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    images = torch.randn(3, 1, 4, 4)
    maps = ImageExplainer(net, "occlusion", grid=2)(images, target=1).maps
    contrib = (net[1].weight[1].view(4, 4) * images[:, 0]).detach()
    expected = contrib.view(3, 2, 2, 2, 2).sum((2, 4))        # (B, i, di, j, dj) -> (B, i, j)
    torch.testing.assert_close(maps[:, 0], expected)
