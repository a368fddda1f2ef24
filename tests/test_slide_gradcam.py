"""The bag engine: chunked slide-level Grad-CAM equals one full-graph backward; instance maps
equal the per-image methods; occlusion and guided backprop are exact; hygiene."""
import numpy as np
import pytest
import torch
from torch import nn

from explainers import engine
from explainers.engine import BagExplainer, frozen, instance_target, slide_target
from explainers.errors import ModelError
from explainers.explain import CPU_BATCH, MAX_BATCH, batch_size, fit_batch
from explainers.methods.guided import guided_relus, saliency
from explainers.methods.registry import implementation, method_names
from explainers.models.config import ModelConfig
from explainers.models.io import build_model
from explainers.models.mil import split_encoder
from oracles import ImageExplainer, capture
from tiling.errors import ConfigError

METHODS = method_names()

N, P = 11, 32
LAYER = "encoder.block4"


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(encoder_kwargs={"width": 4}, patch=P, seed=3)).eval()


@pytest.fixture(scope="module")
def bag():
    return torch.randn(N, 3, P, P, generator=torch.Generator().manual_seed(4))


def run(model, x, methods, target="slide", cls=1, batch=4, forward_batch=3, layer=LAYER):
    explainer = BagExplainer(model, layer, methods)
    with frozen(model):
        chunks = ((lo, min(lo + forward_batch, N), x[lo:lo + forward_batch]) for lo in range(0, N, forward_batch))
        fwd = explainer.forward(chunks, N)
        make = slide_target if target == "slide" else instance_target
        tgt = make(model, fwd.h, cls)
        parts = {m: [] for m in methods}
        for _, _, maps in explainer.maps(fwd, tgt, batch, lambda lo, hi: x[lo:hi]):
            for m in methods:
                parts[m].append(maps[m])
        out = {m: torch.from_numpy(np.concatenate(parts[m])) for m in methods}
    return fwd, tgt, out


def full_graph_slide_grads(model, x, cls, layer=LAYER):
    """d(slide logit)/d(target-layer activations) from one backward over the whole bag (hooks)."""
    with capture(model.get_submodule(layer)) as kept, torch.enable_grad():
        logits, attention = model(x)
        grads, = torch.autograd.grad(logits[cls], kept["acts"])
    return kept["acts"].detach(), grads, attention.detach()


@pytest.mark.parametrize("layer", [LAYER, "encoder.block3"])   # tail: pooling only / block4 + pooling
@pytest.mark.parametrize("batch", [1, 3, 4, N])
def test_chunked_slide_gradcam_equals_one_full_graph_backward(model, bag, batch, layer):
    _, _, out = run(model, bag, ("gradcam", "gradcampp", "hirescam"), batch=batch, layer=layer)
    acts, grads, _ = full_graph_slide_grads(model, bag, 1, layer)
    for name in ("gradcam", "gradcampp", "hirescam"):
        expected = implementation(name)().compute(acts, grads)
        assert float(expected.abs().max()) > 0
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-5)


def test_instance_maps_equal_the_per_image_methods(model, bag):
    fwd, _, out = run(model, bag, ("gradcam", "hirescam", "cam"), target="instance", cls=0)
    classifier = nn.Sequential()
    classifier.add_module("encoder", model.encoder)
    classifier.add_module("classifier", model.classifier)
    for name in ("gradcam", "hirescam"):
        expected = ImageExplainer(classifier, name, LAYER)(bag, target=0).maps[:, 0]
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-5)
    expected = ImageExplainer(classifier, "cam", LAYER, fc="classifier")(bag, target=0).maps[:, 0]
    torch.testing.assert_close(out["cam"], expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fwd.instance_logits, classifier(bag))


def test_slide_cam_is_attention_times_instance_cam(model, bag):
    fwd, _, slide = run(model, bag, ("cam",), target="slide", cls=1)
    _, _, inst = run(model, bag, ("cam",), target="instance", cls=1)
    with torch.no_grad():
        _, attention = model.pool(fwd.h)
    torch.testing.assert_close(slide["cam"], attention[:, None, None] * inst["cam"], atol=1e-6, rtol=1e-5)


def test_slide_occlusion_is_the_exact_drop_of_the_slide_logit(model, bag):
    _, _, out = run(model, bag, ("occlusion",), cls=1)
    assert out["occlusion"].shape == (N, 8, 8)
    with torch.no_grad():
        base, _ = model(bag)
        for k, (i, j) in [(0, (0, 0)), (5, (3, 6)), (10, (7, 7))]:
            occluded = bag.clone()
            occluded[k, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = 0
            logits, _ = model(occluded)
            assert float(out["occlusion"][k, i, j]) == pytest.approx(float(base[1] - logits[1]), abs=1e-5)


def test_slide_guided_backprop_equals_the_full_graph_guided_gradient(model, bag):
    _, _, out = run(model, bag, ("guided_backprop", "guided_gradcam", "gradcam"), cls=1)
    with guided_relus(model.encoder), torch.enable_grad():
        x = bag.clone().requires_grad_()
        logits, _ = model(x)
        grads, = torch.autograd.grad(logits[1], x)
    torch.testing.assert_close(out["guided_backprop"], saliency(grads), atol=1e-6, rtol=1e-4)
    up = torch.nn.functional.interpolate(out["gradcam"][:, None], size=(P, P), mode="bilinear")[:, 0]
    torch.testing.assert_close(out["guided_gradcam"], out["guided_backprop"] * up)


def test_activations_spill_to_a_mapped_file_beyond_the_ram_limit(model, bag, monkeypatch):
    fwd, _, in_ram = run(model, bag, ("gradcam", "hirescam"))
    assert not isinstance(fwd.acts, np.memmap) and fwd.acts.shape == (N, 16, 4, 4)
    monkeypatch.setattr(engine, "RAM_LIMIT", 16 * 4 * 4 * 4 * 5)   # room for 5 patches
    fwd, _, mapped = run(model, bag, ("gradcam", "hirescam"))
    assert isinstance(fwd.acts, np.memmap)
    for name in ("gradcam", "hirescam"):
        torch.testing.assert_close(mapped[name], in_ram[name], rtol=0, atol=0)


def test_engine_leaves_the_model_as_it_was(model, bag):
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)

    def failing_read(lo, hi):
        if lo >= 4:
            raise OSError("disk gone")
        return bag[lo:hi]

    explainer = BagExplainer(model, LAYER, METHODS)
    with pytest.raises(OSError, match="disk gone"), frozen(model):  # noqa: PT012 (it must leave `frozen`)
        fwd = explainer.forward([(0, N, bag)], N)
        for _ in explainer.maps(fwd, slide_target(model, fwd.h, 0), 4, failing_read):
            pass
    run(model, bag, METHODS)
    assert all(not (m._forward_hooks or m._backward_hooks) for m in model.modules())
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    model.eval()
    for p in model.parameters():
        p.grad = None


def test_engine_refuses_unknown_methods_and_cam_without_global_pooling(model):
    with pytest.raises(ConfigError, match="unknown or no methods"):
        BagExplainer(model, LAYER, ("gradcam", "lime"))
    with pytest.raises(ModelError, match="global average pooling"):
        BagExplainer(model, "encoder.block3", ("cam",))
    assert BagExplainer(model, "encoder.block3", ("gradcam",)).tail[0] is model.encoder.block4


VIT = {"dim": 16, "depth": 3, "heads": 2, "img_size": 32, "registers": 2}


def test_vit_slide_and_instance_gradcam_equal_a_float64_hand_computation():
    """Grad-CAM at a ViT block: its patch tokens (class and register tokens dropped) on their
    2 x 2 grid, A (B, C, h, w), G = d(score)/dA through the rest of the ViT and the MIL head."""
    model = build_model(ModelConfig(encoder="vit_small_patch16", encoder_kwargs=VIT, patch=32,
                                    target_layer="encoder.blocks.1", seed=2)).eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ref = model.double()
    enc = ref.encoder
    with torch.enable_grad():
        tokens = enc.blocks[:2](enc.embed(x.double())).detach().requires_grad_()
        h = enc.pool(enc.norm(enc.blocks[2:](tokens)))
        slide, _ = ref.pool(h)
        instance = ref.instance_logits(h)[:, 0].sum()
        g_slide, = torch.autograd.grad(slide[1], tokens, retain_graph=True)
        g_inst, = torch.autograd.grad(instance, tokens)

    def gradcam(grads):
        acts, g = (t[:, 3:].transpose(1, 2).reshape(5, 16, 2, 2) for t in (tokens.detach(), grads))
        return torch.relu((g.mean((2, 3), keepdim=True) * acts).sum(1)).float()

    model.float()
    for target, cls, grads in (("slide", 1, g_slide), ("instance", 0, g_inst)):
        explainer = BagExplainer(model, "encoder.blocks.1", ("gradcam",))
        with frozen(model):
            fwd = explainer.forward([(0, 5, x)], 5)
            tgt = (slide_target if target == "slide" else instance_target)(model, fwd.h, cls)
            out = torch.from_numpy(next(explainer.maps(fwd, tgt, 2))[2]["gradcam"])
        expected = gradcam(grads)[:2]
        assert float(expected.abs().max()) > 0
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_resnet50_slide_gradcam_equals_a_float64_hand_computation():
    """Grad-CAM at ResNet-50's layer3 through layer4, pooling and the MIL head: A (B, 1024, 4, 4)
    on 64-px patches, G = d(slide logit)/dA by autograd in float64, map = relu(Σ_c mean(G_c) A_c)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet50", encoder_kwargs={}, patch=64,
                                    target_layer="encoder.layer3", seed=4)).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    ref = model.double()
    head, tail = split_encoder(ref, "encoder.layer3")
    with torch.enable_grad():
        acts = head(x.double()).detach().requires_grad_()
        logits, _ = ref.pool(tail(acts))
        grads = [torch.autograd.grad(logits[c], acts, retain_graph=True)[0] for c in (0, 1)]
    expected = [torch.relu((g.mean((2, 3), keepdim=True) * acts.detach()).sum(1)).float() for g in grads]
    model.float()
    explainer = BagExplainer(model, "encoder.layer3", ("gradcam",))
    with frozen(model):
        fwd = explainer.forward([(0, 3, x)], 3)
        for cls in (0, 1):
            out = torch.from_numpy(next(explainer.maps(fwd, slide_target(model, fwd.h, cls), 3))[2]["gradcam"])
            torch.testing.assert_close(out, expected[cls], atol=1e-5, rtol=1e-4)
    assert max(float(e.max()) for e in expected) > 0        # one class's evidence is positive somewhere


def test_batches_fit_the_device_memory():
    assert fit_batch(8 << 30, 40 << 20) == 102                  # half of 8 GiB at 40 MiB a patch
    assert fit_batch(1 << 20, 40 << 20) == 1 and fit_batch(1 << 40, 1) == MAX_BATCH
    model = build_model(ModelConfig(encoder_kwargs={"width": 4}))
    assert batch_size(None, model, torch.zeros(1, 3, 64, 64)) == CPU_BATCH
    assert batch_size(7, model, torch.zeros(1, 3, 64, 64)) == 7
