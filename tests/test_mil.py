"""Gated attention MIL: shapes, normalisation, permutation equivariance, the split encoder."""
import pytest
import torch
from torch import nn

from explainers.errors import ModelError
from explainers.models.encoders import build_encoder
from explainers.models.mil import AttentionMIL, GatedAttention, split_encoder


@pytest.fixture
def model():
    torch.manual_seed(0)
    return AttentionMIL(build_encoder("small_cnn", width=4), dim=16, hidden=8, n_classes=3).eval()


def test_gated_attention_formula_and_normalisation():
    torch.manual_seed(1)
    att = GatedAttention(dim=5, hidden=4)
    h = torch.randn(7, 5)
    s = att.w(torch.tanh(att.V(h)) * torch.sigmoid(att.U(h))).squeeze(-1)
    a = att(h)
    assert a.shape == (7,)
    torch.testing.assert_close(a, torch.exp(s) / torch.exp(s).sum())
    assert float(a.detach().sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((a > 0).all())


def test_pooling_shapes_and_permutation_equivariance(model):
    x = torch.randn(9, 3, 32, 32)
    with torch.no_grad():
        logits, a = model(x)
        perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
        logits_p, a_p = model(x[perm])
    assert logits.shape == (3,) and a.shape == (9,)
    torch.testing.assert_close(a_p, a[perm])           # attention follows its patch
    torch.testing.assert_close(logits_p, logits)       # the slide logits do not depend on order


def test_pool_replacing_equals_recomputed_pool(model):
    torch.manual_seed(2)
    h, h_new = torch.randn(6, 16), torch.randn(3, 16)
    idx = torch.tensor([0, 4, 4])
    got = model.pool_replacing(h, idx, h_new)
    for b in range(3):
        replaced = h.clone()
        replaced[idx[b]] = h_new[b]
        expected, _ = model.pool(replaced)
        torch.testing.assert_close(got[b], expected.detach(), atol=1e-5, rtol=1e-5)


def test_split_encoder_composes_to_the_encoder(model):
    x = torch.randn(4, 3, 32, 32)
    head, tail = split_encoder(model, "encoder.block3")
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), model.encoder(x))
        assert head(x).shape == (4, 16, 4, 4)
    head, tail = split_encoder(model, "encoder.block2.1")      # inside a nested stage
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), model.encoder(x))


def test_split_encoder_refuses_bad_layers(model):
    with pytest.raises(ModelError, match="block9"):
        split_encoder(model, "encoder.block9")
    with pytest.raises(ModelError, match="inside the encoder"):
        split_encoder(model, "classifier")
    model.encoder.block4 = nn.ModuleDict({"conv": nn.Conv2d(16, 16, 1)})
    with pytest.raises(ModelError, match=r"not an nn\.Sequential"):
        split_encoder(model, "encoder.block4.conv")
