"""Patch encoders, chosen by name in a model's config.

An encoder maps images (B, 3, H, W) to embeddings (B, D). It must be an `nn.Sequential` of named
stages (nested Sequentials allowed), so the network can be split at its target layer: the
explain stage keeps the target layer's activations and re-runs only the stages after it.

    >>> enc = build_encoder("small_cnn", width=8)
    >>> register_encoder("mine", lambda **kw: nn.Sequential(...))   # any Sequential a user has

Encoders for published weights (`resnet50`, `resnet50_trunc`, `vit_small_patch16`,
`vit_base_patch16`, `vit_large_patch16`) also declare what they expect (`encoder_spec`): the
input's µm/px and size, its normalisation, the embedding width, the default target layer and the
layout of their weight files (`explainers.models.weights.load_encoder_weights`).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from explainers.errors import ModelError
from explainers.models.vit import vision_transformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder expects: `patch` x `patch` RGB inputs at `mpp` µm/px, scaled to [0, 1] and
    normalised as (x - mean) / std per channel; it gives `dim`-d embeddings. `layout` names the
    parameter naming of its weight files ("torchvision", "timm" or "native")."""

    mpp: float
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    default_target_layer: str
    layout: str = "native"


ENCODERS: dict[str, Callable[..., nn.Sequential]] = {}
SPECS: dict[str, Callable[..., EncoderSpec]] = {}


def register_encoder(name: str, factory: Callable[..., nn.Sequential] | None = None,
                     spec: EncoderSpec | Callable[..., EncoderSpec] | None = None):
    """Register `factory(**kwargs) -> nn.Sequential` under `name`; usable as a decorator.
    `spec` (an EncoderSpec, or a function of the factory's kwargs giving one) declares its inputs."""
    def add(f: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
        ENCODERS[name] = f
        if isinstance(spec, EncoderSpec):
            SPECS[name] = lambda **kwargs: spec
        elif spec is not None:
            SPECS[name] = spec
        return f
    return add(factory) if factory is not None else add


def encoder_spec(name: str, **kwargs) -> EncoderSpec:
    """The EncoderSpec of encoder `name` built with `kwargs`; ModelError when it declares none."""
    if name not in SPECS:
        raise ModelError(f"encoder {name!r} declares no input spec (µm/px, patch size, normalisation); "
                         f"encoders that do: {sorted(SPECS)}")
    return SPECS[name](**kwargs)


def build_encoder(name: str, **kwargs) -> nn.Sequential:
    """Build the registered encoder `name` with `kwargs`; ModelError when unknown or malformed."""
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; registered: {sorted(ENCODERS)} "
                         "(register your own with explainers.models.encoders.register_encoder)")
    try:
        encoder = ENCODERS[name](**kwargs)
    except (TypeError, ValueError) as exc:
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


def _resnet50(last: str) -> nn.Sequential:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) up to stage `last`, then global
    average pooling. Built on MONAI's ResNet, whose parameter names are torchvision's; the
    options make its layout torchvision's: 7x7 stride-2 stem, 3x3 stride-2 max pooling, 1x1
    downsample convs without bias (`layerN.0.downsample.0/1`)."""
    from monai.networks.nets import resnet50
    net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2,
                   shortcut_type="B", bias_downsample=False, feed_forward=False)
    names = ["conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    stages = [(n, getattr(net, n)) for n in names[:names.index(last) + 1]]
    return nn.Sequential(OrderedDict([*stages, ("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]))


@register_encoder("resnet50", spec=EncoderSpec(0.5, 224, IMAGENET_MEAN, IMAGENET_STD, 2048,
                                               "encoder.layer4", "torchvision"))
def resnet50() -> nn.Sequential:
    """ResNet-50 (He et al. 2016) without `fc`: a 224-px patch gives (2048, 7, 7) at `layer4`
    and a 2048-d embedding. Weights in torchvision's (or timm's, the same) parameter names."""
    return _resnet50("layer4")


@register_encoder("resnet50_trunc", spec=EncoderSpec(0.5, 224, IMAGENET_MEAN, IMAGENET_STD, 1024,
                                                     "encoder.layer3", "torchvision"))
def resnet50_trunc() -> nn.Sequential:
    """CLAM's feature extractor: ResNet-50 cut after `layer3`, then global average pooling; a
    224-px patch gives (1024, 14, 14) at `layer3` and a 1024-d embedding. A full ResNet-50
    weight file loads too (its `layer4` and `fc` are ignored)."""
    return _resnet50("layer3")


VIT_VARIANTS = {"vit_small_patch16": {"dim": 384, "depth": 12, "heads": 6},
                "vit_base_patch16": {"dim": 768, "depth": 12, "heads": 12},
                "vit_large_patch16": {"dim": 1024, "depth": 24, "heads": 16}}


def _vit_spec(variant: str, **kwargs) -> EncoderSpec:
    """ViTs read 224-px patches at 0.5 µm/px with ImageNet normalisation by default; the target
    layer is block depth-2, the last block's input (its class token attends to the patch tokens)."""
    config = {**VIT_VARIANTS[variant], **kwargs}
    return EncoderSpec(0.5, config.get("img_size", 224), IMAGENET_MEAN, IMAGENET_STD, config["dim"],
                       f"encoder.blocks.{max(config['depth'] - 2, 0)}", "timm")


def _register_vit(variant: str) -> None:
    def factory(**kwargs) -> nn.Sequential:
        return vision_transformer(**{**VIT_VARIANTS[variant], **kwargs})
    factory.__doc__ = (f"{variant}: explainers.models.vit.vision_transformer with {VIT_VARIANTS[variant]}; "
                       "kwargs override them (registers, layer_scale, no_embed_class, img_size, ...).")
    register_encoder(variant, factory, spec=lambda **kwargs: _vit_spec(variant, **kwargs))


for _variant in VIT_VARIANTS:
    _register_vit(_variant)


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
