"""Focus on artefacts, named by kind: where each method's peaks and top patches lie.

Artefact kinds are `tiling.artefacts.ARTEFACT_KINDS`: the map's `artefacts` labels for peaks,
patches.zarr's per-patch `artefact_kind` for patches. The numbers themselves are metrics of the
registry (`reports.audit.registry`: artefact_mass, artefact_peak, artefact_peaks,
artefact_top_patches); this module names the kinds for the report ("4 of 6 top patches on pen ink").
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tiling.artefacts import artefact_name


def top_patches(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` highest `scores` (N,), highest first; NaN counts lowest, ties by index."""
    return np.argsort(-np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf), kind="stable")[:n]


def _counted(kinds: np.ndarray, what: str) -> str:
    """"4 of 6 top patches on pen ink, 1 on tissue fold" (or "none of 6 ... on an artefact")."""
    counts = Counter(artefact_name(k) for k in np.asarray(kinds).tolist() if k)
    if not counts:
        return f"none of {len(kinds)} {what} on an artefact"
    (first, n), *rest = counts.most_common()
    return ", ".join([f"{n} of {len(kinds)} {what} on {first}", *(f"{m} on {name}" for name, m in rest)])


def focus_record(peak_kinds: np.ndarray, patch_kinds: np.ndarray) -> dict[str, Any]:
    """One method's focus by artefact kind: {"peaks": {kind name: count}, "n_peaks",
    "top_patches": {kind name: count}, "n_top_patches", "summary"} from the artefact kind (0 none)
    under each of its peaks and top patches."""
    def counts(kinds: np.ndarray) -> dict[str, int]:
        return dict(Counter(artefact_name(k) for k in np.asarray(kinds).tolist() if k))

    return {"peaks": counts(peak_kinds), "n_peaks": len(peak_kinds),
            "top_patches": counts(patch_kinds), "n_top_patches": len(patch_kinds),
            "summary": f"{_counted(patch_kinds, 'top patches')}; {_counted(peak_kinds, 'peaks')}"}
