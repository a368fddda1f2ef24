"""Convolutional encoders: ours (small_cnn), ResNet-50 in torchvision's layout (built on MONAI)
and MONAI's ResNets and DenseNets, each an `nn.Sequential` of named stages ending in global average pooling and
`nn.Flatten`, so the network splits at any stage (the target layer) and CAM reads the pooling."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


def small_cnn(width: int = 8) -> nn.Sequential:
    """Four 3x3 conv + ReLU blocks (width, 2w, 4w, 4w channels), the first three with stride 2,
    then global average pooling: a P-px patch gives a (4w, P/8, P/8) grid at `block4` (the
    default target layer) and a 4w-dim embedding. Quick to train on a CPU."""
    return nn.Sequential(OrderedDict(
        block1=_conv_block(3, width, 2), block2=_conv_block(width, 2 * width, 2),
        block3=_conv_block(2 * width, 4 * width, 2), block4=_conv_block(4 * width, 4 * width, 1),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))


def resnet50(last: str = "layer4") -> nn.Sequential:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) up to stage `last`, then global
    average pooling. Built on MONAI's ResNet, whose parameter names are torchvision's; the
    options make its layout torchvision's: 7x7 stride-2 stem, 3x3 stride-2 max pooling, 1x1
    downsample convs without bias (`layerN.0.downsample.0/1`). Weight files in torchvision's
    layout load unchanged (tests/test_encoders.py checks keys, shapes, strides and the forward)."""
    from monai.networks.nets import resnet50 as monai_resnet50

    net = monai_resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2,
                         shortcut_type="B", bias_downsample=False, feed_forward=False)
    names = ["conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    if last not in names[4:]:
        raise ValueError(f"last stage {last!r} is not one of {names[4:]}")
    stages = [(n, getattr(net, n)) for n in names[:names.index(last) + 1]]
    return nn.Sequential(OrderedDict([*stages, ("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]))


def monai_densenet(variant: str = "DenseNet121", **kwargs: Any) -> nn.Sequential:
    """A MONAI DenseNet (spatial_dims=2) without its last linear layer; target e.g. `features.norm5`."""
    from monai.networks import nets
    net = getattr(nets, variant)(spatial_dims=2, in_channels=3, out_channels=1, **kwargs)
    tail = [(n, m) for n, m in net.class_layers.named_children() if n != "out"]
    return nn.Sequential(OrderedDict([("features", net.features), *tail]))


def monai_resnet(variant: str = "resnet18", **kwargs: Any) -> nn.Sequential:
    """A MONAI ResNet (spatial_dims=2) without its fc layer; target e.g. `layer4`."""
    from monai.networks import nets
    net = getattr(nets, variant)(spatial_dims=2, n_input_channels=3, feed_forward=False, **kwargs)
    names = ["conv1", "bn1", "act"] + ([] if net.no_max_pool else ["maxpool"])
    names += ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    return nn.Sequential(OrderedDict([(n, getattr(net, n)) for n in names] + [("flatten", nn.Flatten())]))
