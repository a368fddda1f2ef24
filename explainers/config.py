"""The explainers' stage settings, as the run config composes them (`pipeline.config`).

Kept apart from the code that runs them so that reading a config imports no torch: a rerun
with nothing to do never needs it. Method names are split here and checked against the
registry (`explainers.methods.registry.parse_methods`, which imports the methods and torch) when a run's
preflight or the explain stage starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from explainers.methods.registry import default_methods, split_methods
from tiling.errors import require
from tiling.store import runtime

TARGETS = ("slide", "instance")
DEVICES = ("auto", "cpu", "cuda")
FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.50)


@dataclass
class ExplainConfig:
    """methods: registered method names (`explainers.methods.registry`), none for attention and logits
    only (then from kept embeddings, without the encoder, when current: `explainers.embeddings`);
    target: "slide" (the slide logit, through the attention pooling) or "instance" (each patch's
    own logit); target_class: None = the slide's predicted class; device: "auto" (CUDA when
    present), "cpu" or "cuda"; batch: patches per forward (bounds memory, changes no value; None:
    CPU_BATCH on the CPU, on CUDA as many as fit in half the free memory, `batch_size`);
    autocast: the encoder forward in bfloat16 (bf16 autocast; A and h kept in float32). It
    changes values slightly, so it is part of the stamp (not a runtime field): on the test's
    small CNN maps stay within 3 % of their largest |value| and attention within 1e-3 of fp32."""

    methods: tuple[str, ...] = field(default_factory=lambda: default_methods("slides"))
    target: str = "slide"
    target_class: int | None = None
    device: str = runtime("auto")
    batch: int | None = runtime(None)
    autocast: bool = False

    def __post_init__(self) -> None:
        self.methods = split_methods(self.methods)
        require(self.target in TARGETS, "target", self.target, f"one of {', '.join(TARGETS)}")
        require(self.target_class is None or self.target_class >= 0, "target_class", self.target_class,
                "a class index >= 0 or null (the predicted class)")
        require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        require(self.batch is None or self.batch >= 1, "batch", self.batch,
                "a whole number of patches >= 1, or null (sized to the device)")


@dataclass(frozen=True)
class Transform:
    """The ranges of the class impressions' random transform T (`explainers.impressions`):
    shift (px), rotation (degrees), zoom, colour."""

    jitter: int = 4
    rotate: float = 10.0
    scale: float = 0.1
    colour: float = 0.1

    def __post_init__(self) -> None:
        require(min(self.jitter, self.rotate, self.scale, self.colour) >= 0 and self.scale < 1,
                "transform", self, "ranges >= 0 with scale < 1")


@dataclass(frozen=True)
class ImpressionConfig:
    """Settings of the class impressions' ascent; see `explainers.impressions` for the formulas."""

    steps: int = 150
    lr: float = 0.1
    transform: Transform = field(default_factory=Transform)
    tv_weight: float = 5.0
    colour_range: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.steps >= 0, "steps", self.steps, "a whole number >= 0 (0: no impressions)")
        require(self.lr > 0, "lr", self.lr, "a positive step size")
        require(self.tv_weight >= 0, "tv_weight", self.tv_weight, "a number >= 0")
        require(self.colour_range > 0, "colour_range", self.colour_range, "a positive number of std")


@dataclass(frozen=True)
class FaithfulnessConfig:
    """Deletion faithfulness (`explainers.faithfulness`): fractions: deleted shares k; n_random:
    seeded random rankings; margin: a method is unfaithful unless its area < random area -
    margin; seed: for the random rankings."""

    fractions: tuple[float, ...] = FRACTIONS
    n_random: int = 5
    margin: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        steps = zip((0.0, *self.fractions), self.fractions, strict=False)
        require(len(self.fractions) > 0 and all(a < b <= 1 for a, b in steps), "fractions", self.fractions,
                "increasing shares in (0, 1]")
        require(self.n_random >= 1, "n_random", self.n_random, "a whole number of random rankings >= 1")
        require(self.margin >= 0, "margin", self.margin, "a number >= 0")


@dataclass(frozen=True)
class SanityConfig:
    """The randomisation check (`explainers.sanity`). enabled: run the check (on `slides` slides
    of a run, a seeded sample); max_patches: patches per slide (a seeded sample) in the
    re-computed bags; draws: how many times the layers are drawn again (each a seed), the
    decision taken on their median; max_rho: a method whose median ρ is above this once the top
    encoder stage is random is insensitive; seed: for both samples and the new weights."""

    enabled: bool = False
    slides: int = 2
    max_patches: int = 256
    draws: int = 5
    max_rho: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("slides", "max_patches", "draws"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "a whole number >= 1")
        require(-1 <= self.max_rho <= 1, "max_rho", self.max_rho, "a correlation in [-1, 1]")
