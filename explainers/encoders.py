"""Patch encoders, chosen by name in a model's config.

An encoder maps images (B, 3, H, W) to embeddings (B, D). It must be an `nn.Sequential` of named
stages (nested Sequentials allowed), so the network can be split at its target layer: the
explain stage keeps the target layer's activations and re-runs only the stages after it.

    >>> enc = build_encoder("small_cnn", width=8)
    >>> register_encoder("mine", lambda **kw: nn.Sequential(...))   # any Sequential a user has
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from explainers.errors import ModelError

ENCODERS: dict[str, Callable[..., nn.Sequential]] = {}


def register_encoder(name: str, factory: Callable[..., nn.Sequential] | None = None):
    """Register `factory(**kwargs) -> nn.Sequential` under `name`; usable as a decorator."""
    def add(f: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
        ENCODERS[name] = f
        return f
    return add(factory) if factory is not None else add


def build_encoder(name: str, **kwargs) -> nn.Sequential:
    """Build the registered encoder `name` with `kwargs`; ModelError when unknown or malformed."""
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; registered: {sorted(ENCODERS)} "
                         "(register your own with explainers.encoders.register_encoder)")
    try:
        encoder = ENCODERS[name](**kwargs)
    except TypeError as exc:
        raise ModelError(f"encoder {name!r} does not take these arguments {kwargs}: {exc}") from exc
    if not isinstance(encoder, nn.Sequential):
        raise ModelError(f"encoder {name!r} is a {type(encoder).__name__}, not an nn.Sequential of "
                         "stages; wrap its stages in nn.Sequential so it can be split at the target layer")
    return encoder


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


@register_encoder("small_cnn")
def small_cnn(width: int = 8) -> nn.Sequential:
    """Four 3x3 conv + ReLU blocks (width, 2w, 4w, 4w channels), the first three with stride 2,
    then global average pooling: a P-px patch gives a (4w, P/8, P/8) grid at `block4` (the
    default target layer) and a 4w-dim embedding. Quick to train on a CPU."""
    return nn.Sequential(OrderedDict(
        block1=_conv_block(3, width, 2), block2=_conv_block(width, 2 * width, 2),
        block3=_conv_block(2 * width, 4 * width, 2), block4=_conv_block(4 * width, 4 * width, 1),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))


@register_encoder("monai_densenet")
def monai_densenet(variant: str = "DenseNet121", **kwargs) -> nn.Sequential:
    """A MONAI DenseNet (spatial_dims=2) without its last linear layer; target e.g. `features.norm5`."""
    from monai.networks import nets
    net = getattr(nets, variant)(spatial_dims=2, in_channels=3, out_channels=1, **kwargs)
    tail = [(n, m) for n, m in net.class_layers.named_children() if n != "out"]
    return nn.Sequential(OrderedDict([("features", net.features), *tail]))


@register_encoder("monai_resnet")
def monai_resnet(variant: str = "resnet18", **kwargs) -> nn.Sequential:
    """A MONAI ResNet (spatial_dims=2) without its fc layer; target e.g. `layer4`."""
    from monai.networks import nets
    net = getattr(nets, variant)(spatial_dims=2, n_input_channels=3, feed_forward=False, **kwargs)
    names = ["conv1", "bn1", "act"] + ([] if net.no_max_pool else ["maxpool"])
    names += ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    return nn.Sequential(OrderedDict([(n, getattr(net, n)) for n in names] + [("flatten", nn.Flatten())]))


def embedding_dim(encoder: nn.Module, patch: int) -> int:
    """D of the encoder's output, found by one forward of a blank (1, 3, patch, patch) image."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(1, 3, patch, patch))
    finally:
        encoder.train(was_training)
    if out.ndim != 2:
        raise ModelError(f"encoder output has shape {tuple(out.shape)}; it must end in (B, D) embeddings "
                         "(add global pooling and nn.Flatten)")
    return int(out.shape[1])
