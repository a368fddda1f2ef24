"""Every registered encoder against the library that defines it.

The model cards' own calls are written here (`CARDS`, from the cards, not from the records): a
small random instance of the same architecture (same block types, 2 narrow blocks, a 2 x 2 token
grid) is built by that call, saved as its library saves it (timm: a state dict or `save_for_hf`
snapshot; transformers: `save_pretrained`; CONCH: its whole CoCa state dict), imported with
`slideaudit import-model`, and must give the card's embedding to 1e-5 relative. The full-size
architecture, built on the `meta` device (no memory), must have exactly the keys and shapes the
importer expects, the card's embedding width and the published parameter count. Then the weight files' edge cases.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import save_file
from timm.layers import SwiGLUPacked
from timm.models import save_for_hf
from torch import nn
from transformers.core_model_loading import revert_weight_conversion

from explainers.errors import ModelError
from explainers.models.checkpoints import read_head
from explainers.models.encoders import ENCODERS, build_encoder, encoder_spec
from explainers.models.io import load_model
from explainers.models.weights import DROP, read_state_dict, strip_prefixes
from mil_checkpoints import clam_checkpoint, clam_reference
from pipeline.cli import main

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
H_OPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
LUNIT = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
HIBOU = ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SWIGLU = {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}

# name: (library, model, the card's arguments, embedding, normalisation, width of the embedding)
CARDS = {
    "uni_v1": ("timm", "vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                                                  "dynamic_img_size": True}, "model", IMAGENET, 1024),
    "uni_v2": ("timm", "vit_giant_patch14_224", {
        "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5, "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True, **SWIGLU},
        "model", IMAGENET, 1536),
    "virchow": ("timm", "vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                                                 "global_pool": "", "dynamic_img_size": True, **SWIGLU},
                "cls+mean", IMAGENET, 2560),
    "virchow2": ("timm", "vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375,
                                                  "reg_tokens": 4, "global_pool": "", "dynamic_img_size": True,
                                                  **SWIGLU}, "cls+mean", IMAGENET, 2560),
    "h_optimus_0": ("timm", "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "global_pool": "token",
                                                              "init_values": 1e-5, "dynamic_img_size": False},
                    "model", H_OPTIMUS, 1536),
    "h_optimus_1": ("timm", "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5,
                                                              "dynamic_img_size": False}, "model", H_OPTIMUS, 1536),
    "gigapath": ("timm", "vit_giant_patch14_dinov2", {"img_size": 224, "patch_size": 16, "init_values": 1e-5},
                 "model", IMAGENET, 1536),
    "lunit_vits8": ("timm", "vit_small_patch8_224", {}, "model", LUNIT, 384),
    "lunit_vits16": ("timm", "vit_small_patch16_224", {}, "model", LUNIT, 384),
    "vit_small_patch16": ("timm", "vit_small_patch16_224", {}, "model", IMAGENET, 384),
    "vit_base_patch16": ("timm", "vit_base_patch16_224", {}, "model", IMAGENET, 768),
    "vit_large_patch16": ("timm", "vit_large_patch16_224", {}, "model", IMAGENET, 1024),
    "phikon": ("transformers", "ViTModel", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                            "intermediate_size": 3072, "patch_size": 16, "image_size": 224,
                                            "layer_norm_eps": 1e-6}, "last_hidden_state", IMAGENET, 768),
    "phikon_v2": ("transformers", "Dinov2Model", {"hidden_size": 1024, "num_hidden_layers": 24,
                                                  "num_attention_heads": 16, "patch_size": 16, "image_size": 224},
                  "last_hidden_state", IMAGENET, 1024),
    "hibou_b": ("transformers", "Dinov2WithRegistersModel", {
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14, "image_size": 224,
        "num_register_tokens": 4, "use_swiglu_ffn": True}, "pooler_output", HIBOU, 768),
    "hibou_l": ("transformers", "Dinov2WithRegistersModel", {
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14,
        "image_size": 224, "num_register_tokens": 4, "use_swiglu_ffn": True}, "pooler_output", HIBOU, 1024),
    "conch_v1": ("conch", "conch_ViT-B-16", {"img_size": 448, "patch_size": 16, "embed_dim_contrast": 512},
                 "encode_image", OPENAI, 512),
    "ctranspath": ("ctranspath", "swin_tiny_patch4_window7_224", {}, "model", IMAGENET, 768),
    "resnet50": ("torchvision", "resnet50", {"last": "layer4"}, "pool", IMAGENET, 2048),
    "resnet50_trunc": ("torchvision", "resnet50", {"last": "layer3"}, "pool", IMAGENET, 1024),
}
# no published weights: ours and MONAI's, tested in test_model_io.py (round trip, split, CAM)
NOT_PUBLISHED = {"small_cnn", "monai_resnet", "monai_densenet"}
# how each is saved, as its library or its publisher saves it
SAVED_AS = {"uni_v1": "save_for_hf", "uni_v2": "pytorch_model.bin", "virchow": "pytorch_model.bin",
            "virchow2": "pytorch_model.bin", "h_optimus_0": "save_for_hf", "h_optimus_1": "model.safetensors",
            "gigapath": "pytorch_model.bin", "lunit_vits8": "nested", "lunit_vits16": "model.safetensors",
            "vit_small_patch16": "model.safetensors", "vit_base_patch16": "nested",
            "vit_large_patch16": "pytorch_model.bin", "conch_v1": "coca", "ctranspath": "timm 0.5.4",
            "resnet50": "pth", "resnet50_trunc": "pth"}


class CTransPathStem(nn.Module):
    """CTransPath's ConvStem (Xiyue-Wang/TransPath `ctran.py`, described there and in the paper): 3x3
    stride-2 convolutions to C/8 and C/4 channels with batch norm and ReLU, a 1x1 convolution to C,
    the given norm; as timm's embed_layer gives it, channels-last."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None, **_):
        super().__init__()
        side = img_size if isinstance(img_size, int) else img_size[0]
        self.img_size, self.patch_size = (side, side), (patch_size, patch_size)
        self.grid_size = (side // patch_size, side // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers, width = [], in_chans
        for out in (embed_dim // 8, embed_dim // 4):
            layers += [nn.Conv2d(width, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        self.proj = nn.Sequential(*layers, nn.Conv2d(width, embed_dim, kernel_size=1))
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def timm_054_layout(state: dict[str, torch.Tensor], stages: int = 4) -> dict[str, torch.Tensor]:
    """A timm Swin state dict as CTransPath's file holds it (timm 0.5.4): patch merging at the end of
    stages 0-2, relative position indices and shift masks stored, an ImageNet head, under "model"."""
    old = {}
    for key, value in state.items():
        for i in range(1, stages):
            key = key.replace(f"layers.{i}.downsample.", f"layers.{i - 1}.downsample.")
        old[key] = value
        if key.endswith("attn.relative_position_bias_table"):
            old[key.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.long)
    width = next(v.shape[0] for k, v in state.items() if k == "norm.weight")
    return {"model": {**old, "layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49),
                      "head.weight": torch.zeros(1000, width), "head.bias": torch.zeros(1000)}}


class ConchVisual(nn.Module):
    """CONCH's image tower as mahmoodlab/CONCH composes it (`open_clip_custom.vision_tower.VisualModel`
    with `coca_model._build_vision_tower`'s timm trunk), from their pieces: timm's VisionTransformer
    (forward = forward_features), open_clip's AttentionalPooler for the contrastive (1 query) and the
    captioning (`caption_queries`) poolers, LayerNorms, the contrastive projection."""

    def __init__(self, img_size=448, patch_size=16, embed_dim=768, depth=12, num_heads=12, embed_dim_contrast=512,
                 attn_pooler_heads=8, embed_dim_caption=768, caption_queries=256, **timm_args):
        super().__init__()
        from open_clip.transformer import AttentionalPooler, LayerNorm

        self.trunk = timm.models.vision_transformer.VisionTransformer(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4, img_size=img_size,
            patch_size=patch_size, num_classes=0, dynamic_img_size=True, **timm_args)
        self.attn_pool_contrast = AttentionalPooler(embed_dim_contrast, embed_dim, attn_pooler_heads, 1)
        self.ln_contrast = LayerNorm(embed_dim_contrast)
        self.proj_contrast = nn.Parameter(torch.randn(embed_dim_contrast, embed_dim_contrast))
        self.attn_pool_caption = AttentionalPooler(embed_dim_caption, embed_dim, attn_pooler_heads, caption_queries)
        self.ln_caption = LayerNorm(embed_dim_caption)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """CONCH's `encode_image(x, proj_contrast=False, normalize=False)` (`forward_no_head`)."""
        return self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])

    def coca_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of the whole CoCa model this tower belongs to (text towers stand-ins)."""
        return {**{f"visual.{k}": v for k, v in self.state_dict().items()},
                "text.token_embedding.weight": torch.zeros(8, 4), "text_decoder.ln_final.weight": torch.ones(4),
                "logit_scale": torch.tensor(2.6592)}


def test_every_registered_encoder_has_a_card_here():
    assert set(ENCODERS) == set(CARDS) | NOT_PUBLISHED


def small_args(name: str) -> dict:
    """The options that shrink the card's architecture: 2 blocks 32 wide, a 2 x 2 token grid."""
    library, model, *_ = CARDS[name]
    patch = int(ENCODERS[name].geometry().token_patch) if library not in ("torchvision", "ctranspath") else 0
    if library == "timm":
        return {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 2 * patch}
    if library == "ctranspath":
        return {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "img_size": 224}
    if library == "conch":
        return {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 2 * patch, "embed_dim_contrast": 16,
                "attn_pooler_heads": 2}
    if library == "transformers":
        return {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 2 * patch,
                **({"intermediate_size": 64} if model == "ViTModel" else {})}
    return {}


def library_model(name: str, **overrides) -> nn.Module:
    """The card's model (with `overrides`), built by its library, random weights."""
    library, model, args, *_ = CARDS[name]
    if library == "timm":
        return timm.create_model(model, pretrained=False, num_classes=0, **{**args, **overrides})
    if library == "ctranspath":
        return timm.create_model(model, pretrained=False, num_classes=0, embed_layer=CTransPathStem,
                                 **{**args, **overrides})
    if library == "conch":
        caption = {"embed_dim_caption": 8, "caption_queries": 4} if overrides else {}
        return ConchVisual(**{**args, **caption, **overrides})
    if library == "transformers":
        cls = getattr(transformers, model)
        config = cls.config_class(**{**args, **overrides})
        return cls(config) if model != "ViTModel" else cls(config, add_pooling_layer=True)
    import torchvision
    return torchvision.models.resnet50(weights=None)


def card_embedding(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The embedding as the card computes it."""
    _, _, args, how, *_ = CARDS[name]
    if how == "model":
        return model(x)
    if how == "encode_image":
        return model.encode_image(x)
    if how == "cls+mean":
        out = model(x)
        return torch.cat([out[:, 0], out[:, model.num_prefix_tokens:].mean(1)], dim=-1)
    if how == "last_hidden_state":
        return model(pixel_values=x).last_hidden_state[:, 0, :]
    if how == "pooler_output":
        return model(pixel_values=x).pooler_output
    stages = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    for stage in stages[:stages.index(args["last"]) + 1]:
        x = getattr(model, stage)(x)
    return x.mean((2, 3))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn anew (LayerScale, tokens and norms too, which inits leave near 0 or 1);
    batch-norm statistics plausible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("bn1.weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def save(name: str, model: nn.Module, folder: Path) -> Path:
    """The model's weights as its library (or its publisher) saves them; the path to give."""
    folder.mkdir(parents=True)
    how = "save_pretrained" if CARDS[name][0] == "transformers" else SAVED_AS[name]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if how == "save_pretrained":
        model.save_pretrained(folder)
        return folder
    if how == "save_for_hf":
        save_for_hf(model, str(folder), safe_serialization="both")
        return folder
    if how == "timm 0.5.4":   # CTransPath's ctranspath.pth
        torch.save(timm_054_layout(state), folder / "ctranspath.pth")
        return folder / "ctranspath.pth"
    if how == "coca":   # CONCH's pytorch_model.bin: the whole CoCa state dict
        torch.save(model.coca_state_dict(), folder / "pytorch_model.bin")
        return folder
    if how == "model.safetensors":
        save_file(state, str(folder / how))
        return folder / how
    if how == "nested":  # a training checkpoint: DataParallel keys under "state_dict"
        torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "ckpt.pth")
        return folder / "ckpt.pth"
    torch.save(state, folder / ("pytorch_model.bin" if how == "pytorch_model.bin" else "resnet50.pth"))
    return folder / ("pytorch_model.bin" if how == "pytorch_model.bin" else "resnet50.pth")


def import_cli(checkpoint: Path, encoder: str, weights: Path, out: Path, *extra: str) -> object:
    return CliRunner().invoke(main, ["import-model", str(checkpoint), "--format", "clam_sb", "--encoder", encoder,
                                     "--encoder-weights", str(weights), "--classes", "a,b", "--out", str(out), *extra])


def options(args: dict) -> list[str]:
    return [item for k, v in args.items() for item in ("--encoder-option", f"{k}={json.dumps(v)}")]


def head_checkpoint(tmp_path: Path, dim: int, seed: int = 0, data_parallel: bool = False, gated: bool = True) -> Path:
    state = clam_checkpoint(False, "small", gated, classes=2, dim=dim, seed=seed)
    if data_parallel:  # CLAM on several GPUs wrapped its attention net in nn.DataParallel
        state = {k.replace("attention_net.", "attention_net.module.", 1): v for k, v in state.items()}
    path = tmp_path / "s_0_checkpoint.pt"
    torch.save({k: v.float() for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if CARDS[n][0] == "torchvision" else n
                                  for n in sorted(CARDS)])   # ResNet-50 is full size: 10 s each
def test_a_small_instance_imports_and_gives_the_cards_embedding(name, tmp_path):
    library, _, _, _, (mean, std), width = CARDS[name]
    small = small_args(name)
    torch.manual_seed(0)
    reference = randomise(library_model(name, **small), seed=len(name))
    weights = save(name, reference, tmp_path / "weights")
    side = int(small.get("img_size", small.get("image_size", 64)))   # a ResNet reads 64 px as well as 224
    dim = width if library == "torchvision" else 64 if CARDS[name][3] == "cls+mean" else \
        8 * small["embed_dim"] if library == "ctranspath" else small.get("embed_dim_contrast", 32)
    # a transformers snapshot carries its config.json: its architecture needs no options
    result = import_cli(head_checkpoint(tmp_path, dim), name, weights, tmp_path / "model",
                        *([] if library == "transformers" else options(small)))
    assert result.exit_code == 0, result.output
    model, config = load_model(tmp_path / "model")
    patch = 224 if library == "torchvision" else side
    assert (config.mean, config.std, config.mpp, config.patch) == (list(mean), list(std), 0.5, patch)
    x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, expected = model.encoder(x), card_embedding(name, reference, x)
    assert ours.shape == (3, dim)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def full_size_saved(name: str) -> dict[str, torch.Tensor]:
    """The full-size model's state dict as its library saves it, on the meta device."""
    with torch.device("meta"):   # timm's init skipped: it draws nothing on meta tensors anyway
        model = library_model(name, **({"weight_init": "skip"} if CARDS[name][0] == "timm" else {}))
    if CARDS[name][0] == "conch":
        return model.coca_state_dict()
    if CARDS[name][0] == "ctranspath":
        return timm_054_layout(model.state_dict())["model"]
    state = model.state_dict()
    if CARDS[name][0] == "transformers":
        return revert_weight_conversion(model, state)      # what save_pretrained writes
    return state


@pytest.mark.parametrize("name", sorted(CARDS))
def test_the_full_size_architecture_has_the_keys_and_shapes_the_importer_expects(name):
    record = ENCODERS[name]
    saved = full_size_saved(name)
    with torch.device("meta"):
        encoder = build_encoder(name)
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    if record.layout == "torchvision":
        read = {k: tuple(v.shape) for k, v in saved.items() if not k.startswith("fc.")
                and not (name == "resnet50_trunc" and k.startswith("layer4."))}
    else:
        read = {k: tuple(v.shape) for k, v in encoder.from_library(strip_prefixes(saved), DROP[record.layout]).items()}
    assert read == expected
    spec = encoder_spec(name)
    assert spec.dim == CARDS[name][5] and (spec.mean, spec.std) == CARDS[name][4]
    assert spec.patch == CARDS[name][2].get("img_size", 224)
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    if record.params_m is not None:
        assert abs(params - record.params_m) <= 0.05 * record.params_m, params


def test_the_readme_table_has_a_row_for_every_encoder():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("### Encoders"):]
    table = table[:table.index("\n## ")]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `") and "--encoder" not in line]
    assert sorted(n.strip(" `") for row in rows for n in row.split(",")) == sorted(ENCODERS)


def test_the_cli_lists_every_encoder_and_refuses_an_unknown_one(tmp_path):
    help_text = CliRunner().invoke(main, ["import-model", "--help"]).output
    assert all(name in help_text for name in ENCODERS)
    ckpt = head_checkpoint(tmp_path, 32)
    result = import_cli(ckpt, "uni_3", ckpt, tmp_path / "m")
    assert result.exit_code == 2 and "not a registered encoder" in result.output and "uni_v2" in result.output


# ---- weights edge cases -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uni2_small(tmp_path_factory) -> tuple[Path, nn.Module]:
    """A small UNI2-h-like ViT (patch 14, 8 registers) saved as pytorch_model.bin."""
    torch.manual_seed(0)
    model = randomise(library_model("uni_v2", **small_args("uni_v2")), seed=3)
    return save("uni_v2", model, tmp_path_factory.mktemp("uni2") / "weights"), model


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output  # a model that does not fit: the exit-code table's 2
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return result.output


def test_a_patch_14_file_given_as_a_patch_16_encoder_is_one_line(uni2_small, tmp_path):
    weights, _ = uni2_small
    ckpt = head_checkpoint(tmp_path, 32)
    out = one_line_error(import_cli(ckpt, "uni_v1", weights, tmp_path / "m",
                                    *options({"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32})))
    assert "patch-14 ViT" in out and "uni_v1 takes 16-px patches" in out and "uni_v2" in out
    out = one_line_error(import_cli(ckpt, "vit_base_patch16", weights, tmp_path / "m"))  # options read off the file
    assert "patch-14 ViT" in out and "not patch 16" in out
    assert not (tmp_path / "m").exists()


def test_a_vit_of_another_width_or_depth_is_one_line(uni2_small, tmp_path):
    weights, _ = uni2_small
    out = one_line_error(import_cli(head_checkpoint(tmp_path, 48), "uni_v2", weights, tmp_path / "m",
                                    *options({"embed_dim": 48, "depth": 2, "num_heads": 2, "img_size": 28})))
    assert "32 wide and 2 blocks deep" in out and "uni_v2 is 48 x 2" in out


def test_torchscript_is_refused_because_it_runs_code(tmp_path):
    path = tmp_path / "encoder.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ModelError, match="TorchScript archive, which is refused because loading it runs the code"):
        read_state_dict(path)
    out = one_line_error(import_cli(head_checkpoint(tmp_path, 32), "lunit_vits16", path, tmp_path / "m"))
    assert "TorchScript" in out and "unreadable" not in out and "corrupt" not in out


def test_mean_and_std_replace_the_records_normalisation(uni2_small, tmp_path):
    weights, _ = uni2_small
    ckpt = head_checkpoint(tmp_path, 32)
    small = options(small_args("uni_v2"))
    result = import_cli(ckpt, "uni_v2", weights, tmp_path / "m", *small,
                        "--mean", "0.7,0.6,0.7", "--std", "0.2,0.2,0.2")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["mean"], config["std"]) == ([0.7, 0.6, 0.7], [0.2, 0.2, 0.2])
    for bad in (["--std", "0.2,0,0.2"], ["--mean", "0.5,0.5"]):
        result = import_cli(ckpt, "uni_v2", weights, tmp_path / "m2", *small, *bad)
        assert result.exit_code == 2 and "R,G,B" in result.output


@pytest.mark.parametrize("gated", [True, False])
def test_clam_checkpoints_from_multi_gpu_training_import(uni2_small, tmp_path, gated):
    weights, _ = uni2_small
    ckpt = head_checkpoint(tmp_path, 32, seed=5, data_parallel=True, gated=gated)
    assert any(k.startswith("attention_net.module.") for k in torch.load(ckpt, weights_only=True))
    result = import_cli(ckpt, "uni_v2", weights, tmp_path / "m", *options(small_args("uni_v2")))
    assert result.exit_code == 0, result.output
    model, _ = load_model(tmp_path / "m")
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h = model.encoder(x)
        logits, attention = model.pool(h)
    state = clam_checkpoint(False, "small", gated, classes=2, dim=32, seed=5)
    ref_logits, ref_attention = clam_reference({k: v.float() for k, v in state.items()}, h, False, gated)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention, ref_attention[0], atol=1e-5, rtol=1e-5)


def test_read_head_strips_only_the_data_parallel_wrapper(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"attention_net.module.3.module.0.weight": torch.zeros(1), "attention_net.module.0.bias": torch.zeros(1),
                "classifiers.weight": torch.zeros(1), "instance_loss_fn.weight": torch.zeros(1)}, path)
    assert sorted(read_head(path, "clam_sb")) == ["attention_net.0.bias", "attention_net.3.module.0.weight",
                                                  "classifiers.weight"]


@pytest.mark.parametrize(("name", "small"), [
    ("uni_v2", {"embed_dim": 32, "depth": 3, "num_heads": 2, "img_size": 42}),            # 8 registers, 3 x 3
    ("hibou_b", {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 42}),
])
def test_vit_gradcam_drops_class_and_register_tokens_and_keeps_the_grid(name, small):
    """Grad-CAM at the default target (the last block's input) through the engine equals the hand
    computation on the patch tokens tokens[:, L:] on their row-major grid, L = 1 + registers."""
    from explainers.engine import BagExplainer, frozen, slide_target
    from explainers.models.config import ModelConfig
    from explainers.models.io import build_model
    from explainers.models.mil import split_encoder

    spec = encoder_spec(name, **small)
    model = build_model(ModelConfig(encoder=name, encoder_kwargs=small, patch=spec.patch, seed=1,
                                    target_layer=spec.default_target_layer)).eval()
    randomise(model.encoder, seed=2)
    prefix = model.encoder.prefix_tokens
    assert spec.default_target_layer == "encoder.blocks.1" and prefix == 1 + (8 if name == "uni_v2" else 4)
    x = torch.randn(4, 3, 42, 42, generator=torch.Generator().manual_seed(3))
    head, tail = split_encoder(model, spec.default_target_layer)
    with torch.enable_grad():
        tokens = head(x).detach().requires_grad_()
        grads, = torch.autograd.grad(model.pool(tail(tokens))[0][1], tokens)
    acts, g = (t[:, prefix:].transpose(1, 2).reshape(4, 32, 3, 3) for t in (tokens.detach(), grads))
    expected = torch.relu((g.mean((2, 3), keepdim=True) * acts).sum(1))
    explainer = BagExplainer(model, spec.default_target_layer, ("gradcam",))
    with frozen(model):
        fwd = explainer.forward([(0, 4, x)], 4)
        out = torch.from_numpy(next(explainer.maps(fwd, slide_target(model, fwd.h, 1), 4))[2]["gradcam"])
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(out, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)


def test_a_dinov2_snapshot_stored_at_518_px_reads_224_px_patches_when_told():
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 518}
    encoder = build_encoder("phikon_v2", **small, input_size=224)
    assert encoder.patch_grid == (14, 14) and encoder_spec("phikon_v2", **small, input_size=224).patch == 224
    with torch.no_grad():
        assert encoder.eval().embed(torch.zeros(1, 3, 224, 224)).shape == (1, 1 + 14 * 14, 32)
    with pytest.raises(ModelError, match="reads 32-px inputs only"):
        build_encoder("phikon", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      image_size=32, input_size=64)
