"""Patch encoders: one record (`Encoder`) per encoder, chosen by name in a model's config.

A record names the encoder as the community does (`uni_v2`, `virchow2`, `h_optimus_0`, ...) and
says how it is built and read:

    builder, kwargs   the function of the library that defines it and its exact arguments
                      (timm's VisionTransformer: `explainers.models.timm_vit`; transformers'
                      ViTModel / Dinov2Model / Dinov2WithRegistersModel: `explainers.models.hf_vit`;
                      CONCH's CoCa image tower, timm + open_clip: `explainers.models.coca`;
                      torchvision and MONAI ResNets: `explainers.models.cnn`)
    pooling           the embedding: "cls" (class token), "cls+mean" (class token ‖ mean of the
                      patch tokens), "pooler" (the library's pooler output, DINOv2's = the class
                      token), "attentional" (CoCa's attentional pooler, CONCH), "avg" (a CNN's
                      global average pooling)
    mpp, patch        the input it was trained on: `patch` x `patch` px at `mpp` µm/px
    mean, std         its normalisation: (x - mean) / std per channel, x in [0, 1]
    prefix tokens     a ViT's class and register tokens (`geometry().prefix`), dropped for maps
    target            the default Grad-CAM layer: a ViT's last block's input (`blocks.<depth-2>`:
                      its patch tokens on their grid), a CNN's stage
    layout, weights   the key layout of its weight files and the files accepted
    params_m, source  the published parameter count and the model card it was checked against

Records are plain data (this module imports no torch), so the CLI's `--encoder` choices and help,
the README table and the model config come from them without loading a model. An encoder is an
`nn.Sequential` of named stages, so the network is split at its target layer; ViTs are
`explainers.models.tokens.TokenEncoder`s (they carry their prefix tokens and patch grid).

    >>> enc = build_encoder("small_cnn", width=8)
    >>> build_encoder("uni_v2")                               # timm, full size, random weights
    >>> register_encoder("mine", lambda **kw: nn.Sequential(...))   # any Sequential a user has
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from explainers.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
H_OPTIMUS_MEAN, H_OPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
LUNIT_MEAN, LUNIT_STD = (0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464)
HIBOU_MEAN, HIBOU_STD = (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

TOKEN_POOLINGS = ("cls", "cls+mean", "pooler")
ALIASES = {"dim": "embed_dim", "heads": "num_heads", "registers": "reg_tokens", "layer_scale": "init_values"}
TIMM, HF = "explainers.models.timm_vit:timm_vit", "explainers.models.hf_vit:hf_vit"
COCA = "explainers.models.coca:coca_vit"
TIMM_BUILT = (TIMM, COCA)   # builders that take timm's VisionTransformer arguments
TIMM_FILES = ("model.safetensors", "pytorch_model.bin", "a timm state dict", "a snapshot folder")
HF_FILES = ("a snapshot folder (save_pretrained)", "model.safetensors", "pytorch_model.bin")
TV_FILES = ("a torchvision state dict (.pth)", ".safetensors")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder expects: `patch` x `patch` RGB inputs at `mpp` µm/px, scaled to [0, 1] and
    normalised as (x - mean) / std per channel; it gives `dim`-d embeddings. `layout` names the
    parameter naming of its weight files ("torchvision", "timm", "transformers" or "native")."""

    mpp: float
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    default_target_layer: str
    layout: str = "native"


@dataclass(frozen=True)
class ViTGeometry:
    """A ViT's shape: `width` x `depth` blocks, `token_patch`-px patches of an `img`-px input,
    `prefix` tokens (class + registers) before the (img/token_patch)² patch tokens."""

    width: int
    depth: int
    token_patch: int
    img: int
    prefix: int


@dataclass(frozen=True)
class Encoder:
    """One encoder (module docstring). `kwargs` are the builder's defaults; a model config's
    `encoder_kwargs` override them. `from_weights`: options read off the weights file (a
    generic timm ViT's registers, LayerScale, position layout). `spec_of`: for encoders
    registered with a spec function instead of fields."""

    name: str
    builder: str | Callable[..., nn.Sequential]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    library: str = "ours"
    architecture: str = ""
    pooling: str = "avg"
    mpp: float | None = None
    patch: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    dim: int | None = None
    target: str | None = None
    layout: str = "native"
    weights: tuple[str, ...] = ()
    from_weights: bool = False
    params_m: float | None = None
    source: str = ""
    notes: str = ""
    spec_of: Callable[..., EncoderSpec] | None = None

    def options(self, **overrides: Any) -> dict[str, Any]:
        """The builder's arguments: kwargs, then `overrides` (older timm names renamed)."""
        merged = {**self.kwargs, **overrides}
        if self.builder in TIMM_BUILT:
            merged = {ALIASES.get(k, k): v for k, v in merged.items()}
        if self.pooling in TOKEN_POOLINGS:
            merged.setdefault("pooling", self.pooling)
        return merged

    def geometry(self, **overrides: Any) -> ViTGeometry | None:
        """The ViT's shape with `overrides`, from the arguments alone (no model built); None for CNNs."""
        o = self.options(**overrides)
        if self.builder in TIMM_BUILT:
            return ViTGeometry(int(o["embed_dim"]), int(o["depth"]), int(o["patch_size"]), int(o.get("img_size", 224)),
                               1 + int(o.get("reg_tokens") or 0))
        if self.builder == HF:
            return ViTGeometry(int(o["hidden_size"]), int(o["num_hidden_layers"]), int(o["patch_size"]),
                               int(o.get("input_size") or o.get("image_size", 224)),
                               1 + int(o.get("num_register_tokens") or 0))
        return None

    def spec(self, **overrides: Any) -> EncoderSpec | None:
        """The EncoderSpec with `overrides`; None when the record declares no input."""
        if self.spec_of is not None:
            return self.spec_of(**overrides)
        if self.mpp is None or self.mean is None or self.std is None:
            return None
        vit = self.geometry(**overrides)
        if vit is None:
            if self.patch is None or self.dim is None or self.target is None:
                return None
            return EncoderSpec(self.mpp, self.patch, self.mean, self.std, self.dim, self.target, self.layout)
        options = self.options(**overrides)
        pooling = options.get("pooling", self.pooling)
        dim = {"cls+mean": 2 * vit.width, "attentional": options.get("embed_dim_contrast", 512)}.get(pooling, vit.width)
        return EncoderSpec(self.mpp, vit.img, self.mean, self.std, int(dim),
                           f"encoder.blocks.{max(vit.depth - 2, 0)}", self.layout)

    def build(self, **overrides: Any) -> nn.Sequential:
        """The encoder built by its library with `overrides` (random weights, nothing downloaded)."""
        builder = self.builder
        if isinstance(builder, str):
            module, _, attr = builder.partition(":")
            builder = getattr(importlib.import_module(module), attr)
        return builder(**self.options(**overrides))


ENCODERS: dict[str, Encoder] = {}


def register_encoder(name: str | Encoder, factory: Callable[..., nn.Sequential] | None = None,
                     spec: EncoderSpec | Callable[..., EncoderSpec] | None = None):
    """Register an Encoder record, or `factory(**kwargs) -> nn.Sequential` under `name` (usable
    as a decorator); `spec` (an EncoderSpec, or a function of the factory's kwargs giving one)
    declares its inputs."""
    if isinstance(name, Encoder):
        ENCODERS[name.name] = name
        return name

    def add(f: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
        fixed = spec
        spec_of = (lambda **kwargs: fixed) if isinstance(fixed, EncoderSpec) else fixed
        ENCODERS[name] = Encoder(name, f, library="user", architecture=(f.__doc__ or "").strip().split("\n")[0],
                                 spec_of=spec_of)
        return f
    return add(factory) if factory is not None else add


def encoder_record(name: str) -> Encoder:
    """The record of encoder `name`; ModelError naming the registered ones when unknown."""
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; registered: {', '.join(ENCODERS)} "
                         "(register your own with explainers.models.encoders.register_encoder)")
    return ENCODERS[name]


def encoder_names() -> list[str]:
    """The registered encoders' names, in registration order (the CLI's choices)."""
    return list(ENCODERS)


def encoder_spec(name: str, **kwargs: Any) -> EncoderSpec:
    """The EncoderSpec of encoder `name` built with `kwargs`; ModelError when it declares none."""
    spec = encoder_record(name).spec(**kwargs)
    if spec is None:
        declared = [n for n, r in ENCODERS.items() if r.spec_of is not None or r.mpp is not None]
        raise ModelError(f"encoder {name!r} declares no input spec (µm/px, patch size, normalisation); "
                         f"encoders that do: {declared}")
    return spec


def build_encoder(name: str, **kwargs: Any) -> nn.Sequential:
    """Build the registered encoder `name` with `kwargs`; ModelError when unknown or malformed."""
    from torch import nn

    record = encoder_record(name)
    try:
        encoder = record.build(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"encoder {name!r} does not take these arguments {kwargs}: {exc}") from exc
    if not isinstance(encoder, nn.Sequential):
        raise ModelError(f"encoder {name!r} is a {type(encoder).__name__}, not an nn.Sequential of "
                         "stages; wrap its stages in nn.Sequential so it can be split at the target layer")
    return encoder


def embedding_dim(encoder: nn.Module, patch: int) -> int:
    """D of the encoder's output, found by one forward of a blank (1, 3, patch, patch) image."""
    import torch

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


def _timm(name: str, model: str, architecture: str, pooling: str = "cls", mean: tuple = IMAGENET_MEAN,
          std: tuple = IMAGENET_STD, **kwargs: Any) -> Encoder:
    args = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("params_m", "source", "notes", "from_weights")}
    return Encoder(name, TIMM, MappingProxyType({"model": model, **args}), "timm", architecture, pooling, 0.5, None,
                   mean, std, layout="timm", weights=TIMM_FILES, **kwargs)


def _hf(name: str, model_class: str, architecture: str, pooling: str = "cls", mean: tuple = IMAGENET_MEAN,
        std: tuple = IMAGENET_STD, **kwargs: Any) -> Encoder:
    args = {k: kwargs.pop(k) for k in list(kwargs) if k not in ("params_m", "source", "notes")}
    return Encoder(name, HF, MappingProxyType({"model_class": model_class, **args}), "transformers", architecture,
                   pooling, 0.5, None, mean, std, layout="transformers", weights=HF_FILES, **kwargs)


SWIGLU: dict[str, Any] = {"mlp_layer": "swiglu_packed", "act_layer": "silu"}
VIT_GIANT: dict[str, Any] = {"embed_dim": 1536, "depth": 40, "num_heads": 24, "init_values": 1e-5,
                             "mlp_ratio": 2.66667 * 2, **SWIGLU}

for _record in (
    # ---- timm ----------------------------------------------------------------------------------
    _timm("uni_v1", "vit_large_patch16_224", "ViT-L/16 (1024 x 24), LayerScale",
          img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, init_values=1e-5,
          dynamic_img_size=True, params_m=303, source="https://huggingface.co/MahmoodLab/UNI"),
    _timm("uni_v2", "vit_giant_patch14_224", "ViT-H/14-like (1536 x 24), SwiGLU, 8 registers, LayerScale",
          img_size=224, patch_size=14, embed_dim=1536, depth=24, num_heads=24, init_values=1e-5,
          mlp_ratio=2.66667 * 2, no_embed_class=True, reg_tokens=8, dynamic_img_size=True, **SWIGLU,
          params_m=681, source="https://huggingface.co/MahmoodLab/UNI2-h"),
    _timm("virchow", "vit_huge_patch14_224", "ViT-H/14 (1280 x 32), SwiGLU, LayerScale", "cls+mean",
          img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16, init_values=1e-5,
          mlp_ratio=5.3375, dynamic_img_size=True, **SWIGLU, params_m=632,
          source="https://huggingface.co/paige-ai/Virchow"),
    _timm("virchow2", "vit_huge_patch14_224", "ViT-H/14 (1280 x 32), SwiGLU, 4 registers, LayerScale", "cls+mean",
          img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16, init_values=1e-5,
          mlp_ratio=5.3375, reg_tokens=4, dynamic_img_size=True, **SWIGLU, params_m=632,
          source="https://huggingface.co/paige-ai/Virchow2",
          notes="trained at several magnifications; the record reads 0.5 µm/px"),
    _timm("h_optimus_0", "vit_giant_patch14_reg4_dinov2", "ViT-g/14 DINOv2 (1536 x 40), SwiGLU, 4 registers",
          mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD, img_size=224, patch_size=14, reg_tokens=4, no_embed_class=True,
          dynamic_img_size=False, **VIT_GIANT, params_m=1100, source="https://huggingface.co/bioptimus/H-optimus-0"),
    _timm("h_optimus_1", "vit_giant_patch14_reg4_dinov2", "ViT-g/14 DINOv2 (1536 x 40), SwiGLU, 4 registers",
          mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD, img_size=224, patch_size=14, reg_tokens=4, no_embed_class=True,
          dynamic_img_size=False, **VIT_GIANT, params_m=1100, source="https://huggingface.co/bioptimus/H-optimus-1",
          notes="architecture and mean/std assumed those of H-optimus-0 (same timm recipe on its card)"),
    _timm("gigapath", "vit_giant_patch14_dinov2", "ViT-g (1536 x 40), patch 16, SwiGLU, LayerScale",
          img_size=224, patch_size=16, **VIT_GIANT, params_m=1130,
          source="https://huggingface.co/prov-gigapath/prov-gigapath (tile encoder)"),
    _timm("lunit_vits8", "vit_small_patch8_224", "ViT-S/8 (384 x 12), DINO", mean=LUNIT_MEAN, std=LUNIT_STD,
          img_size=224, patch_size=8, embed_dim=384, depth=12, num_heads=6, params_m=21.7,
          source="https://github.com/lunit-io/benchmark-ssl-pathology (DINO_p8)"),
    _timm("lunit_vits16", "vit_small_patch16_224", "ViT-S/16 (384 x 12), DINO", mean=LUNIT_MEAN, std=LUNIT_STD,
          img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, params_m=21.7,
          source="https://github.com/lunit-io/benchmark-ssl-pathology (DINO_p16)"),
    _timm("vit_small_patch16", "vit_small_patch16_224", "ViT-S/16 (384 x 12); registers, LayerScale from the weights",
          img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, from_weights=True),
    _timm("vit_base_patch16", "vit_base_patch16_224", "ViT-B/16 (768 x 12); registers, LayerScale from the weights",
          img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, from_weights=True),
    _timm("vit_large_patch16", "vit_large_patch16_224",
          "ViT-L/16 (1024 x 24); registers, LayerScale from the weights",
          img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, from_weights=True),
    Encoder("conch_v1", COCA, MappingProxyType({
        "model": "vit_base_patch16_224", "img_size": 448, "patch_size": 16, "embed_dim": 768, "depth": 12,
        "num_heads": 12, "dynamic_img_size": True, "embed_dim_contrast": 512, "attn_pooler_heads": 8}),
        "timm + open_clip", "CoCa ViT-B/16 image tower (768 x 12), attentional pooler", "attentional", 0.5, None,
        OPENAI_MEAN, OPENAI_STD, layout="open_clip", weights=("pytorch_model.bin (the whole CoCa model)",
                                                            "a snapshot folder"),
        params_m=87.3, source="https://huggingface.co/MahmoodLab/CONCH",
        notes="448-px input (its transform resizes; pipelines feed 512 px at 20x); the embedding is "
              "encode_image(proj_contrast=False, normalize=False), 512-d"),
    # ---- transformers --------------------------------------------------------------------------
    _hf("phikon", "ViTModel", "ViT-B/16 (768 x 12), iBOT", hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, intermediate_size=3072, patch_size=16, image_size=224, layer_norm_eps=1e-6,
        qkv_bias=True, params_m=86, source="https://huggingface.co/owkin/phikon",
        notes="layer_norm_eps 1e-6 (the card's corrected config; older snapshots say 1e-12: a snapshot's "
              "config.json is read)"),
    _hf("phikon_v2", "Dinov2Model", "ViT-L/16 (1024 x 24), DINOv2, LayerScale", hidden_size=1024,
        num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=16, image_size=224,
        layer_norm_eps=1e-6, layerscale_value=1.0, use_swiglu_ffn=False, params_m=303,
        source="https://huggingface.co/owkin/phikon-v2",
        notes="image_size 224 assumed (positions are interpolated to the input as the model does)"),
    _hf("hibou_b", "Dinov2WithRegistersModel", "ViT-B/14 (768 x 12), DINOv2, SwiGLU, 4 registers", "pooler",
        HIBOU_MEAN, HIBOU_STD, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
        patch_size=14, image_size=224, num_register_tokens=4, use_swiglu_ffn=True, layer_norm_eps=1e-6,
        layerscale_value=1.0, params_m=86, source="https://huggingface.co/histai/hibou-b",
        notes="published with its own modeling code (trust_remote_code, never run here); built as transformers' "
              "Dinov2WithRegistersModel from its config.json"),
    _hf("hibou_l", "Dinov2WithRegistersModel", "ViT-L/14 (1024 x 24), DINOv2, SwiGLU, 4 registers", "pooler",
        HIBOU_MEAN, HIBOU_STD, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
        patch_size=14, image_size=224, num_register_tokens=4, use_swiglu_ffn=True, layer_norm_eps=1e-6,
        layerscale_value=1.0, params_m=304, source="https://huggingface.co/histai/hibou-L",
        notes="config assumed that of Hibou-B at ViT-L width (its snapshot's config.json is read)"),
    Encoder("ctranspath", "explainers.models.swin:ctranspath", MappingProxyType({}), "timm",
            "Swin-T (96, depths 2-2-6-2, window 7) with a convolutional stem", "avg", 0.5, 224, IMAGENET_MEAN,
            IMAGENET_STD, 768, "encoder.blocks.3", "timm", ("ctranspath.pth ({'model': timm 0.5.4 keys})",
                                                            *TIMM_FILES[:2]),
            params_m=27.5, source="https://github.com/Xiyue-Wang/TransPath (ctran.py)",
            notes="timm's swin_tiny_patch4_window7_224 with CTransPath's ConvStem; its 0.5.4-era keys are "
                  "converted by timm's checkpoint_filter_fn"),
    # ---- torchvision, MONAI, ours --------------------------------------------------------------
    Encoder("resnet50", "explainers.models.cnn:resnet50", MappingProxyType({}),
            "monai", "ResNet-50 (torchvision's layout) without fc", "avg", 0.5, 224, IMAGENET_MEAN, IMAGENET_STD, 2048,
            "encoder.layer4", "torchvision", TV_FILES, params_m=23.5),
    Encoder("resnet50_trunc", "explainers.models.cnn:resnet50", MappingProxyType({"last": "layer3"}), "monai",
            "ResNet-50 cut after layer3 (CLAM's extractor)", "avg", 0.5, 224, IMAGENET_MEAN, IMAGENET_STD, 1024,
            "encoder.layer3", "torchvision", TV_FILES, params_m=8.5,
            notes="a full ResNet-50 file loads too (its layer4 and fc are ignored)"),
    Encoder("monai_resnet", "explainers.models.cnn:monai_resnet", MappingProxyType({}), "monai",
            "MONAI ResNet (variant=...), no fc; target e.g. encoder.layer4"),
    Encoder("monai_densenet", "explainers.models.cnn:monai_densenet", MappingProxyType({}), "monai",
            "MONAI DenseNet (variant=...), no classifier; target e.g. encoder.features.norm5"),
    Encoder("small_cnn", "explainers.models.cnn:small_cnn", MappingProxyType({"width": 8}), "ours",
            "four 3x3 conv blocks, global average pooling (the demo's)"),
):
    register_encoder(_record)
