"""The tiling and stitching stages' settings, as the run config composes them (`pipeline.config`).

Kept apart from the stages so that reading a config imports neither OpenSlide, Dask nor SciPy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tiling.annotations import EXCLUSION
from tiling.errors import require
from tiling.store import runtime

PLAUSIBLE_MPP = (0.05, 20.0)  # level-0 µm/px: from beyond a 100x objective to a 0.5x overview


def plausible(mpp: float) -> bool:
    """True for a finite level-0 µm/px within PLAUSIBLE_MPP (a slide scanner's)."""
    return math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


DEFAULT_MPP, DEFAULT_PATCH = 1.0, 224  # what an unset tile.mpp / tile.patch means outside `run`
ARTEFACT_KEYS = {"ink": 1, "fold": 2, "blank": 3}  # --drop-artefacts names of tiling.artefacts' labels


@dataclass(frozen=True)
class TileConfig:
    """mpp: patch resolution, µm/px; patch: side, px (None = unset: `slideaudit run` takes the
    model's config.json `mpp` / `patch`, see `resolved`; elsewhere DEFAULT_MPP / DEFAULT_PATCH);
    stride: step between patches, px at `mpp` (None = patch); min_tissue: least tissue fraction
    kept; slide_mpp: level-0 µm/px for slides that record none; max_patches: most patch positions
    on a slide's grid (glass included), checked before any read; drop_artefacts: the artefact
    kinds (ARTEFACT_KEYS: pen ink, folds, blank or blurred regions, `tiling.artefacts`) whose
    pixels do not count as tissue, as a deployment that removes them would (default none: the
    model sees what its own pipeline would, and the audit measures the artefacts instead); a
    comma-separated string is split; chunk: patches per zarr chunk and per Dask block."""

    mpp: float | None = None
    patch: int | None = None
    stride: int | None = None
    min_tissue: float = 0.5
    slide_mpp: float | None = None
    max_patches: int = 500_000
    drop_artefacts: tuple[str, ...] = ()
    chunk: int = runtime(64)  # the zarr layout only: the patches' values do not change

    def __post_init__(self) -> None:
        names = self.drop_artefacts.split(",") if isinstance(self.drop_artefacts, str) else self.drop_artefacts
        object.__setattr__(self, "drop_artefacts", tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip())))
        require(set(self.drop_artefacts) <= set(ARTEFACT_KEYS), "drop_artefacts", ",".join(self.drop_artefacts),
                f"artefact kinds among {', '.join(ARTEFACT_KEYS)}, comma-separated")
        require(self.mpp is None or self.mpp > 0, "mpp", self.mpp, "a positive number of µm/px or null")
        require(self.patch is None or self.patch >= 1, "patch", self.patch, "a whole number of px >= 1 or null")
        require(self.stride is None or self.stride >= 1, "stride", self.stride, "a whole number of px >= 1 or null")
        require(0 <= self.min_tissue <= 1, "min_tissue", self.min_tissue, "a fraction in [0, 1]")
        require(self.slide_mpp is None or plausible(self.slide_mpp), "slide_mpp", self.slide_mpp,
                f"a slide scanner's µm/px within {PLAUSIBLE_MPP[0]:g}-{PLAUSIBLE_MPP[1]:g} or null")
        require(self.max_patches >= 1, "max_patches", self.max_patches, "a whole number of patches >= 1")
        require(self.chunk >= 1, "chunk", self.chunk, "a whole number of patches >= 1")

    def resolved(self, mpp: float = DEFAULT_MPP, patch: int = DEFAULT_PATCH) -> TileConfig:
        """This config with an unset mpp (µm/px) and patch (px) set to the given ones."""
        return replace(self, mpp=mpp if self.mpp is None else self.mpp,
                       patch=patch if self.patch is None else self.patch)

    @property
    def target(self) -> tuple[float, int]:
        """(mpp, patch) the patches are read at: unset ones are DEFAULT_MPP / DEFAULT_PATCH."""
        resolved = self.resolved()
        return float(resolved.mpp or DEFAULT_MPP), int(resolved.patch or DEFAULT_PATCH)

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.target[1]


@dataclass(frozen=True)
class StitchConfig:
    """max_side: longest side of the maps in px and patch_px: most map px per patch side (both set
    D unless `downsample` is given; patch_px keeps the maps of a small slide, and the time spent on
    them, in proportion to its patches); downsample: level-0 px per map px; lesion_classes: the
    annotation classes that are lesions (empty = the format's rules, `tiling.annotations`);
    exclude_classes: the classes subtracted from lesions; max_vertices: most vertices of one
    annotation polygon (a slide with a larger one fails, naming it); chunk: zarr chunk side; block_pixels:
    most resampled values held in memory at once while stitching."""

    max_side: int = 4096
    patch_px: int = 64
    downsample: float | None = None
    lesion_classes: tuple[str, ...] = ()
    exclude_classes: tuple[str, ...] = tuple(sorted(EXCLUSION))
    max_vertices: int = runtime(2_000_000)  # fails or passes, never changes a map
    chunk: int = runtime(1024)  # the zarr layout only
    block_pixels: int = runtime(1 << 24)  # memory only

    def __post_init__(self) -> None:
        require(self.max_side >= 1, "max_side", self.max_side, "a whole number of px >= 1")
        require(self.patch_px >= 1, "patch_px", self.patch_px, "a whole number of px >= 1")
        require(self.downsample is None or self.downsample > 0, "downsample", self.downsample,
                "a positive number of level-0 px per map px or null")
        for key in ("lesion_classes", "exclude_classes"):
            names = getattr(self, key)
            require(isinstance(names, tuple) and all(isinstance(n, str) and n.strip() for n in names),
                    key, names, "a list of annotation class names (QuPath classifications, ASAP groups)")
        overlap = {n.lower() for n in self.lesion_classes} & {n.lower() for n in self.exclude_classes}
        require(not overlap, "lesion_classes", self.lesion_classes,
                f"disjoint from exclude_classes (both name {', '.join(sorted(overlap))})")
        require(self.max_vertices >= 3, "max_vertices", self.max_vertices, "a whole number of vertices >= 3")
        require(self.chunk >= 1, "chunk", self.chunk, "a whole number of px >= 1")
        require(self.block_pixels >= 1, "block_pixels", self.block_pixels, "a whole number >= 1")
