"""The audit stage's settings (`reports.audit.stage`), as the run config composes them (`pipeline.config`).

Kept apart from the stage so that reading a config imports neither torch nor great-expectations.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from explainers.config import FaithfulnessConfig, SanityConfig
from tiling.errors import require


@dataclass(frozen=True)
class AuditConfig:
    """tolerance_um: a pointing-game hit may miss the lesion by this much (µm);
    top_k: top-k fractions of tissue scored by IoU/Dice (besides the lesion's own share);
    n_peaks: peaks per map for the lesion hit rate and the report; peak_distance_um: least
    distance between two peaks (µm); agreement_fraction: top fraction compared between methods;
    agreement_pixels: most tissue pixels (a seeded random sample) for the rank correlations;
    min_auroc: a positive slide's method is flagged "focus outside the lesion" when its
    pointing game misses or its pixel AUROC is below this (AUROC, unlike relevance mass, does
    not shrink with the lesion's size); min_spearman: two methods are
    flagged as disagreeing below this rank correlation; top_patches: most attended patches
    listed in the report; seed: for the agreement sample; faithfulness: deletion settings;
    sanity: the randomisation check (`explainers.sanity`), on the slides a run picks."""

    tolerance_um: float = 50.0
    top_k: tuple[float, ...] = (0.05, 0.10, 0.20)
    n_peaks: int = 5
    peak_distance_um: float = 250.0
    agreement_fraction: float = 0.10
    agreement_pixels: int = 1_000_000
    min_auroc: float = 0.75
    min_spearman: float = 0.3
    top_patches: int = 6
    max_artefact_change: float = 0.2
    seed: int = 0
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)

    def __post_init__(self) -> None:
        require(self.tolerance_um >= 0, "tolerance_um", self.tolerance_um, "a number of µm >= 0")
        require(len(self.top_k) > 0 and all(0 < k <= 1 for k in self.top_k), "top_k", self.top_k,
                "a non-empty list of fractions in (0, 1]")
        for key in ("n_peaks", "agreement_pixels", "top_patches"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "a whole number >= 1")
        require(self.peak_distance_um >= 0, "peak_distance_um", self.peak_distance_um, "a number of µm >= 0")
        require(0 < self.agreement_fraction <= 1, "agreement_fraction", self.agreement_fraction,
                "a fraction in (0, 1]")
        require(0 <= self.min_auroc <= 1, "min_auroc", self.min_auroc, "an AUROC in [0, 1]")
        require(-1 <= self.min_spearman <= 1, "min_spearman", self.min_spearman, "a correlation in [-1, 1]")
        require(0 < self.max_artefact_change <= 1, "max_artefact_change", self.max_artefact_change,
                "a change of probability in (0, 1]")
