"""Encoders for published weights: torchvision ResNet-50 and timm ViT key layouts load and
compute the published architectures (float64 references written here), errors name the keys.
The ViTs are timm's own VisionTransformer (explainers.models.timm_vit); the foundation encoders'
records are tested in tests/test_foundation_encoders.py."""
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from explainers.errors import ModelError
from explainers.models.config import ModelConfig
from explainers.models.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_encoder,
    embedding_dim,
    encoder_spec,
)
from explainers.models.io import build_model
from explainers.models.mil import split_encoder
from explainers.models.timm_vit import options_from_weights
from explainers.models.weights import load_encoder_weights, read_state_dict

RESNET50_BLOCKS = (3, 4, 6, 3)
TINY = {"dim": 32, "depth": 2, "heads": 2, "img_size": 32}


# ---- torchvision ResNet-50 -------------------------------------------------------------------

def torchvision_resnet50_shapes(classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of torchvision's resnet50 and its shape (Bottleneck v1.5, expansion 4)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(name: str, c: int) -> None:
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                       f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})
    bn("bn1", 64)
    cin = 64
    for i, (n, planes) in enumerate(zip(RESNET50_BLOCKS, (64, 128, 256, 512), strict=True), 1):
        for b in range(n):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, cin, 1, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            cin = 4 * planes
    shapes.update({"fc.weight": (classes, 2048), "fc.bias": (classes,)})
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of `shapes`: convs/linears ~ N(0, 1/fan_in), BN statistics plausible."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g) + (1.0 if key.endswith("gamma") else 0.0)
    return state


def reference_resnet50(sd: dict[str, torch.Tensor], x: torch.Tensor, stages: int) -> torch.Tensor:
    """torchvision's ResNet-50 forward in eval mode, through layer`stages`, then global average pooling."""
    def bn(y, p):
        return F.batch_norm(y, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)
    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for i, (n, stride) in enumerate(zip(RESNET50_BLOCKS[:stages], (1, 2, 2, 2)[:stages], strict=True), 1):
        for b in range(n):
            p, s = f"layer{i}.{b}", stride if b == 0 else 1
            y = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
            y = F.relu(bn(F.conv2d(y, sd[f"{p}.conv2.weight"], stride=s, padding=1), f"{p}.bn2"))
            y = bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            skip = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1") if b == 0 else x
            x = F.relu(y + skip)
    return x.mean((2, 3))


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A torchvision-layout ResNet-50 state dict saved as `module.`-prefixed safetensors."""
    state = random_state(torchvision_resnet50_shapes(), seed=0)
    path = tmp_path_factory.mktemp("w") / "resnet50.safetensors"
    save_file({f"module.{k}": v for k, v in state.items()}, str(path))
    return path, state


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return build_encoder("resnet50")


def test_resnet50_has_torchvisions_keys_shapes_and_strides(resnet50):
    expected = {k: s for k, s in torchvision_resnet50_shapes().items() if not k.startswith("fc.")}
    assert {k: tuple(v.shape) for k, v in resnet50.state_dict().items()} == expected
    assert resnet50.conv1.stride == (2, 2) and resnet50.maxpool.stride == 2
    assert resnet50.layer2[0].conv2.stride == (2, 2) and resnet50.layer2[0].conv1.stride == (1, 1)
    assert resnet50.layer3[0].downsample[0].stride == (2, 2)


def test_resnet50_and_trunc_load_torchvision_weights_and_match_the_reference(resnet50, resnet_file):
    path, state = resnet_file
    load_encoder_weights(resnet50, path, "torchvision")
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    with torch.no_grad():
        out = resnet50.double().eval()(x)
        torch.testing.assert_close(out, reference_resnet50(ref, x, 4))
        torch.manual_seed(0)
        trunc = load_encoder_weights(build_encoder("resnet50_trunc"), path, "torchvision").double().eval()
        torch.testing.assert_close(trunc(x), reference_resnet50(ref, x, 3))
    resnet50.float()
    assert [n for n, _ in trunc.named_children()][-3:] == ["layer3", "avgpool", "flatten"]
    assert embedding_dim(trunc.float(), 64) == 1024 and embedding_dim(resnet50, 64) == 2048


def test_a_missing_resnet_key_is_named(resnet50, resnet_file, tmp_path):
    _, state = resnet_file
    broken = {k: v for k, v in state.items() if k != "layer3.5.bn3.running_var"}
    broken["layer1.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ModelError) as err:
        load_encoder_weights(resnet50, path, "torchvision")
    msg = str(err.value)
    assert str(path) in msg and "missing 1 [layer3.5.bn3.running_var]" in msg
    assert "layer1.0.conv2.weight: file (64, 64, 1, 1), needed (64, 64, 3, 3)" in msg


# ---- timm ViT --------------------------------------------------------------------------------

def timm_vit_shapes(dim: int, depth: int, grid: int, registers: int = 0, layer_scale: bool = False,
                    no_embed_class: bool = False, classes: int = 5) -> dict[str, tuple[int, ...]]:
    """timm VisionTransformer's state-dict keys and shapes (patch 16, MLP ratio 4, qkv bias)."""
    n = grid * grid + (0 if no_embed_class else 1 + registers)
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, n, dim),
              "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)}
    if registers:
        shapes["reg_token"] = (1, registers, dim)
    for i in range(depth):
        p = f"blocks.{i}"
        shapes.update({f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                       f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                       f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                       f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                       f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                       f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)})
        if layer_scale:
            shapes.update({f"{p}.ls1.gamma": (dim,), f"{p}.ls2.gamma": (dim,)})
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim), "head.bias": (classes,)})
    return shapes


def reference_vit(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int, heads: int,
                  no_embed_class: bool) -> torch.Tensor:
    """The class-token embedding of timm's ViT (pre-norm blocks, LN eps 1e-6, exact GELU)."""
    b, dim = len(x), sd["cls_token"].shape[-1]
    d = dim // heads
    patches = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    tokens = patches.flatten(2).transpose(1, 2)
    prefix = [sd[k].expand(b, -1, -1) for k in ("cls_token", "reg_token") if k in sd]
    if no_embed_class:
        z = torch.cat([*prefix, tokens + sd["pos_embed"]], 1)
    else:
        z = torch.cat([*prefix, tokens], 1) + sd["pos_embed"]

    def ln(y, name):
        return F.layer_norm(y, (dim,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    for i in range(depth):
        p = f"blocks.{i}"
        q, k, v = (F.linear(ln(z, f"{p}.norm1"), sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
                   .split(dim, -1))
        q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
        o = F.linear((attn @ v).transpose(1, 2).reshape(b, -1, dim), sd[f"{p}.attn.proj.weight"],
                     sd[f"{p}.attn.proj.bias"])
        z = z + o * sd.get(f"{p}.ls1.gamma", 1.0)
        m = F.linear(F.gelu(F.linear(ln(z, f"{p}.norm2"), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                     sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        z = z + m * sd.get(f"{p}.ls2.gamma", 1.0)
    return ln(z, "norm")[:, 0]


VIT_CASES = [  # (registers, layer_scale, no_embed_class, saved as, prefix)
    (0, False, False, "safetensors", ""),
    (4, True, True, "pth", "backbone."),
    (2, False, False, "pth", "module.model."),
    (1, True, False, "safetensors", ""),
]


@pytest.mark.parametrize(("registers", "layer_scale", "no_embed_class", "fmt", "prefix"), VIT_CASES)
def test_timm_vit_loads_and_matches_the_reference(tmp_path, registers, layer_scale, no_embed_class, fmt, prefix):
    shapes = timm_vit_shapes(32, 2, grid=2, registers=registers, layer_scale=layer_scale, no_embed_class=no_embed_class)
    state = random_state(shapes, seed=registers)
    kwargs = options_from_weights(state, img_size=32)
    assert kwargs == {"reg_tokens": registers, "init_values": 1.0 if layer_scale else None,
                      "no_embed_class": no_embed_class}
    path = tmp_path / f"vit.{fmt}"
    saved = {prefix + k: v for k, v in state.items()}
    save_file(saved, str(path)) if fmt == "safetensors" else torch.save(saved, path)
    encoder = build_encoder("vit_small_patch16", **TINY, **kwargs)
    load_encoder_weights(encoder, path, "timm")
    assert encoder.prefix_tokens == 1 + registers and encoder.patch_grid == (2, 2)
    assert encoder.to_library(encoder.state_dict()).keys() == {k for k in shapes if not k.startswith("head.")}
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = {k: v.double() for k, v in state.items()}
    with torch.no_grad():
        torch.testing.assert_close(encoder.double().eval()(x), reference_vit(ref, x, 2, 2, no_embed_class))


def test_real_vit_small_has_timms_shapes():
    torch.manual_seed(0)
    encoder = build_encoder("vit_small_patch16")
    expected = {k: s for k, s in timm_vit_shapes(384, 12, grid=14).items() if not k.startswith("head.")}
    assert {k: tuple(v.shape) for k, v in encoder.to_library(encoder.state_dict()).items()} == expected
    assert encoder.patch_grid == (14, 14) and encoder.prefix_tokens == 1
    assert len(encoder.blocks) == 12 and encoder.blocks[0].attn.num_heads == 6


def test_patch_tokens_reshape_to_the_documented_grid():
    torch.manual_seed(0)
    encoder = build_encoder("vit_small_patch16", **{**TINY, "img_size": 48}, registers=3, no_embed_class=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        tokens = encoder.embed(x)[:, encoder.prefix_tokens:] - encoder.embed.pos_embed
        grid = tokens.transpose(1, 2).reshape(2, 32, *encoder.patch_grid)
        torch.testing.assert_close(grid, encoder.embed.patch_embed.proj(x))
    with pytest.raises(AssertionError, match="doesn't match model"):   # timm's own check
        encoder(torch.randn(1, 3, 32, 32))


def test_the_timm_layout_renames_the_embedding_and_drops_the_head():
    encoder = build_encoder("vit_small_patch16", **TINY, registers=1, layer_scale=1.0)
    state = {k: torch.zeros(1) for k in ("cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight",
                                          "blocks.0.ls1.gamma", "norm.bias", "head.weight")}
    assert sorted(encoder.from_library(state, ("head.",))) == [
        "blocks.0.ls1.gamma", "embed.cls_token", "embed.patch_embed.proj.weight", "embed.pos_embed",
        "embed.reg_token", "norm.bias"]


def test_wrong_vit_keys_are_named(tmp_path):
    state = random_state(timm_vit_shapes(32, 2, grid=2, registers=4), seed=0)
    del state["blocks.1.attn.qkv.weight"]
    state["blocks.0.attn.qkv_weight_typo"] = torch.zeros(1)
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError) as err:  # built without the file's registers
        load_encoder_weights(build_encoder("vit_small_patch16", **TINY), path, "timm")
    msg = str(err.value)
    assert str(path) in msg and "missing 1 [blocks.1.attn.qkv.weight]" in msg
    assert "unexpected 2 [blocks.0.attn.qkv_weight_typo, embed.reg_token]" in msg
    assert "embed.pos_embed: file (1, 9, 32), needed (1, 5, 32)" in msg and "registers" in msg


def test_many_missing_keys_are_counted_not_all_listed(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match=r"missing 30 \[.*\.\.\. \(20 more\)\]; unexpected 1 \[something.else\]"):
        load_encoder_weights(build_encoder("vit_small_patch16", **TINY), path, "timm")


class NotATensor:
    pass


def test_files_are_never_unpickled_and_errors_give_no_unsafe_advice(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"w": torch.zeros(1), "obj": NotATensor()}, path)
    with pytest.raises(ModelError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ModelError, match="unreadable"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="no such weights file"):
        read_state_dict(tmp_path / "absent.pth")


def test_a_nested_checkpoint_is_unwrapped(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {"module.norm.weight": torch.ones(2)}}, path)
    assert list(read_state_dict(path)) == ["module.norm.weight"]
    with pytest.raises(ModelError, match="unknown weight layout 'keras'"):
        load_encoder_weights(build_encoder("small_cnn", width=2), path, "keras")


def test_the_vit_splits_at_a_block_inside_a_model():
    spec = encoder_spec("vit_small_patch16", **TINY)
    assert spec.default_target_layer == "encoder.blocks.0" and spec.patch == 32 and spec.dim == 32
    model = build_model(ModelConfig(encoder="vit_small_patch16", encoder_kwargs={**TINY, "registers": 2},
                                    patch=spec.patch, target_layer=spec.default_target_layer, seed=1)).eval()
    head, tail = split_encoder(model, "encoder.blocks.0")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = head(x)
        assert tokens.shape == (3, 3 + 4, 32)
        torch.testing.assert_close(tail(tokens), model.encoder(x))
    assert model.classifier.in_features == 32
    for layer, reaches_patches in [("encoder.blocks.0", True), ("encoder.blocks.1", False)]:
        head, tail = split_encoder(model, layer)  # after the last block only the class token matters
        tokens = head(x).detach().requires_grad_()   # a random readout: LayerNorm outputs sum to a constant
        grad, = torch.autograd.grad((tail(tokens) @ torch.randn(32, generator=torch.Generator().manual_seed(0))).sum(),
                                    tokens)
        assert bool(grad[:, 3:].abs().sum() > 0) == reaches_patches


def test_specs_declare_inputs_dims_and_target_layers():
    for name, dim, layer in [("resnet50", 2048, "encoder.layer4"), ("resnet50_trunc", 1024, "encoder.layer3"),
                             ("vit_small_patch16", 384, "encoder.blocks.10"),
                             ("vit_base_patch16", 768, "encoder.blocks.10"),
                             ("vit_large_patch16", 1024, "encoder.blocks.22")]:
        spec = encoder_spec(name)
        assert (spec.mpp, spec.patch, spec.dim, spec.default_target_layer) == (0.5, 224, dim, layer)
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert spec.layout == ("torchvision" if name.startswith("resnet") else "timm")
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    with pytest.raises(ModelError, match="declares no input spec"):
        encoder_spec("small_cnn")
    with pytest.raises(ModelError, match="divisible"):
        build_encoder("vit_small_patch16", dim=30, heads=4)
