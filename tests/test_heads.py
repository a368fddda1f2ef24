"""CLAM and ABMIL heads from random checkpoints in their training code's key layout, against
reference forwards written here from the published architectures (float64)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from explainers.engine import BagExplainer, slide_target
from explainers.errors import ModelError
from explainers.models.heads import HEADS, n_classes_of
from mil_checkpoints import D, abmil_checkpoint, abmil_reference, clam_checkpoint, clam_reference

N = 9


def head(mil: str, state: dict) -> nn.Module:
    cls, kwargs_of = HEADS[mil]
    model = cls(nn.Sequential(), D, n_classes_of(state, mil), **kwargs_of(state)).double()
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture
def h() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("size", ["small", "big"])
@pytest.mark.parametrize("gated", [True, False])
def test_clam_sb_equals_the_reference(h, size, gated):
    state = clam_checkpoint(False, size, gated)
    logits, attention = head("clam_sb", state).pool(h)
    ref_logits, ref_attention = clam_reference(state, h, False, gated)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention, ref_attention[0], atol=1e-5, rtol=1e-5)


def test_clam_mb_explains_the_branch_of_the_class(h):
    state = clam_checkpoint(True, "big", True, classes=3)
    model = head("clam_mb", state)
    ref_logits, ref_attention = clam_reference(state, h, True, True)
    for cls in range(3):
        logits, attention = model.pool(h, cls)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attention, ref_attention[cls], atol=1e-5, rtol=1e-5)
    predicted = int(ref_logits.argmax())
    torch.testing.assert_close(model.pool(h)[1], ref_attention[predicted], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("part2", [True, False])
def test_abmil_equals_the_reference(h, gated, part2):
    state = abmil_checkpoint(gated, part2, outputs=1)
    model = head("abmil", state)
    logits, attention = model.pool(h)
    ref_y, ref_attention = abmil_reference(state, h, gated)
    torch.testing.assert_close(attention, ref_attention, atol=1e-5, rtol=1e-5)
    # one sigmoid output: the stored two-class logits give the same probability
    torch.testing.assert_close(torch.softmax(logits, 0)[1], torch.sigmoid(ref_y[0]), atol=1e-6, rtol=1e-6)
    assert model.linear_features == (not part2)


def test_pool_replacing_equals_recomputed_pool_for_every_head(h):
    idx = torch.tensor([0, 4, 4, 8])
    h_new = torch.randn(4, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for mil, state in [("clam_sb", clam_checkpoint(False, "small", True)),
                       ("clam_mb", clam_checkpoint(True, "small", False)),
                       ("abmil", abmil_checkpoint(True, True, outputs=3))]:
        model = head(mil, state)
        got = model.pool_replacing(h, idx, h_new)
        for b in range(len(idx)):
            changed = h.clone()
            changed[idx[b]] = h_new[b]
            torch.testing.assert_close(got[b], model.pool(changed)[0], atol=1e-9, rtol=1e-9)


def test_slide_gradients_through_a_clam_head_equal_autograd(h):
    model = head("clam_mb", clam_checkpoint(True, "small", True))
    target = slide_target(model, h, 2)
    hg = h.clone().requires_grad_()
    grad, = torch.autograd.grad(clam_reference(clam_checkpoint(True, "small", True), hg, True, True)[0][2], hg)
    torch.testing.assert_close(target.grad, grad, atol=1e-8, rtol=1e-6)
    assert target.linear is None                      # CLAM transforms h first: no linear CAM weights


def test_cam_is_refused_on_a_nonlinear_head():
    model = head("clam_sb", clam_checkpoint(False, "small", True)).float()
    model.encoder = nn.Sequential(nn.Conv2d(3, D, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelError, match="linear in the embedding"):
        BagExplainer(model, "encoder.0", ("cam",))


def test_a_checkpoint_without_the_expected_weight_is_named():
    state = clam_checkpoint(False, "small", True)
    del state["attention_net.0.weight"]
    with pytest.raises(ModelError, match=r"attention_net\.0\.weight"):
        head("clam_sb", state)
