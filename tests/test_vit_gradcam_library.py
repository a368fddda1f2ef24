"""ViT Grad-CAM against pytorch-grad-cam (a dev extra): a small UNI2-h-like ViT (patch 14, 8
registers, LayerScale, SwiGLU) inside an A-MIL model; the score of patch k is its instance logit
W_t h_k + b_t (the engine's instance target, pytorch-grad-cam's ClassifierOutputTarget(t) on a
model whose output is the instance logits). Same target layer (the last block's input, the
record's default), pytorch-grad-cam's reshape transform dropping the class and register tokens.
"""
from __future__ import annotations

import numpy as np
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

SMALL = {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 42}   # 3 x 3 tokens of 14 px
CLASS = 1


class InstanceLogits(nn.Module):
    """x (B, 3, P, P) -> the instance logits (B, classes): what pytorch-grad-cam scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.instance_logits(self.model.encoder(x))


def test_vit_gradcam_with_registers_and_patch_14_equals_pytorch_grad_cam():
    spec = encoder_spec("uni_v2", **SMALL)
    model = build_model(ModelConfig(encoder="uni_v2", encoder_kwargs=SMALL, patch=spec.patch, seed=1,
                                    target_layer=spec.default_target_layer)).eval()
    randomise(model.encoder, seed=4)
    prefix, (h, w) = model.encoder.prefix_tokens, model.encoder.patch_grid
    assert (prefix, h, w, spec.default_target_layer) == (9, 3, 3, "encoder.blocks.1")
    x = torch.randn(6, 3, 42, 42, generator=torch.Generator().manual_seed(5))

    explainer = BagExplainer(model, spec.default_target_layer, ("gradcam",))
    with frozen(model):
        bag = explainer.forward([(0, 6, x)], 6)
        ours = next(explainer.maps(bag, instance_target(model, bag.h, CLASS), 6))[2]["gradcam"]

    def tokens_on_grid(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    layer = model.encoder.blocks[1]
    with GradCAM(InstanceLogits(model), target_layers=[layer], reshape_transform=tokens_on_grid) as cam:
        targets = [ClassifierOutputTarget(CLASS)] * len(x)
        theirs = cam(input_tensor=x, targets=targets)   # ReLU, min-max, resized, min-max again
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads, False), 0)

    assert ours.shape == raw.shape == (6, 3, 3) and float(raw.max()) > 0
    np.testing.assert_allclose(ours, raw, rtol=1e-4, atol=1e-5 * float(raw.max()))
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(ours, (42, 42))), theirs, atol=1e-5)
