"""Transformer Grad-CAM against pytorch-grad-cam (a dev extra), inside an A-MIL model; the score of
patch k is its instance logit W_t h_k + b_t (the engine's instance target; pytorch-grad-cam's
ClassifierOutputTarget(t) on a model whose output is the instance logits). Same target layer (the
record's default) and pytorch-grad-cam's reshape transform: for a small UNI2-h-like ViT (patch 14,
8 registers, LayerScale, SwiGLU) the last block's input without the class and register tokens on
their grid; for a small CTransPath (Swin) the last stage's channels-last map.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_foundation_encoders import randomise
from torch import nn

from explainers.engine import BagExplainer, frozen, instance_target
from explainers.models.config import ModelConfig
from explainers.models.encoders import encoder_spec
from explainers.models.io import build_model

CLASS = 1
SMALL = {  # name: (builder arguments, input side, target layer, the target's grid)
    "uni_v2": ({"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 42}, 42, "encoder.blocks.1", (3, 3)),
    "ctranspath": ({"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}, 224, "encoder.blocks.3",
                   (7, 7)),
}


class InstanceLogits(nn.Module):
    """x (B, 3, P, P) -> the instance logits (B, classes): what pytorch-grad-cam scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.instance_logits(self.model.encoder(x))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_transformer_gradcam_equals_pytorch_grad_cam(name):
    args, side, target, (h, w) = SMALL[name]
    spec = encoder_spec(name, **args)
    model = build_model(ModelConfig(encoder=name, encoder_kwargs=args, patch=spec.patch, seed=1,
                                    target_layer=spec.default_target_layer)).eval()
    randomise(model.encoder, seed=4)
    assert (spec.default_target_layer, spec.patch) == (target, side)
    x = torch.randn(6, 3, side, side, generator=torch.Generator().manual_seed(5))

    explainer = BagExplainer(model, target, ("gradcam",))
    with frozen(model):
        bag = explainer.forward([(0, 6, x)], 6)
        ours = next(explainer.maps(bag, instance_target(model, bag.h, CLASS), 6))[2]["gradcam"]

    prefix = model.encoder.prefix_tokens

    def on_grid(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4:                                   # Swin: (B, h, w, C)
            return t.permute(0, 3, 1, 2)
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    layer = model.encoder.blocks[int(target.rsplit(".", 1)[1])]
    with GradCAM(InstanceLogits(model), target_layers=[layer], reshape_transform=on_grid) as cam:
        targets = [ClassifierOutputTarget(CLASS)] * len(x)
        theirs = cam(input_tensor=x, targets=targets)   # ReLU, min-max, resized, min-max again
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads, False), 0)

    assert ours.shape == raw.shape == (6, h, w) and float(raw.max()) > 0
    np.testing.assert_allclose(ours, raw, rtol=1e-4, atol=1e-5 * float(raw.max()))
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours, (side, side))), theirs, atol=5e-5)
