"""The bag engine: chunked slide-level Grad-CAM equals one full-graph backward; instance maps
equal the per-image methods; occlusion and guided backprop are exact; hygiene."""
import numpy as np
import pytest
import torch
from torch import nn

from explainers import slide_gradcam
from explainers.cam import capture, frozen
from explainers.cams import CAM_METHODS, GradCAM
from explainers.errors import ModelError
from explainers.guided import guided_relus, saliency
from explainers.model_io import ModelConfig, build_model
from explainers.slide_gradcam import METHODS, BagExplainer, instance_target, slide_target

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
        expected = CAM_METHODS[name](model, layer).compute(acts, grads)
        assert float(expected.abs().max()) > 0
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-5)


def test_instance_maps_equal_the_per_image_methods(model, bag):
    fwd, _, out = run(model, bag, ("gradcam", "hirescam", "cam"), target="instance", cls=0)
    classifier = nn.Sequential()
    classifier.add_module("encoder", model.encoder)
    classifier.add_module("classifier", model.classifier)
    for name in ("gradcam", "hirescam"):
        expected = CAM_METHODS[name](classifier, LAYER)(bag, target=0).maps[:, 0]
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-5)
    expected = CAM_METHODS["cam"](classifier, LAYER, fc="classifier")(bag, target=0).maps[:, 0]
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
    monkeypatch.setattr(slide_gradcam, "RAM_LIMIT", 16 * 4 * 4 * 4 * 5)   # room for 5 patches
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
    with pytest.raises(ValueError, match="unknown methods"):
        BagExplainer(model, LAYER, ("gradcam", "lime"))
    with pytest.raises(ModelError, match="global average pooling"):
        BagExplainer(model, "encoder.block3", ("cam",))
    assert BagExplainer(model, "encoder.block3", ("gradcam",)).tail[0] is model.encoder.block4
    assert isinstance(GradCAM(model, LAYER).layer, nn.Sequential)
