"""great-expectations suites at the stage boundaries.

Each suite checks one table and returns a `SuiteResult` (suite name, success, the failed
expectations with what was observed); a failed suite marks its slide, it never raises.
Suites: ``patches.coords`` (inside the slide, unique), ``explain.attention`` (finite, in [0, 1],
sums to 1), ``maps`` (finite on tissue, NaN off it, within each map's range) and ``audit.csv``
(one row per slide x method, metrics in [0, 1]).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

ATTENTION_SUM_TOLERANCE = 1e-3
MAX_LISTED = 10
MAX_ROWS = 1000
_lock = threading.Lock()


@dataclass
class SuiteResult:
    """suite: its name; success: every expectation met; evaluated: how many ran;
    failed: one record per unmet expectation (expectation, column(s), observed, examples)."""

    suite: str
    success: bool
    evaluated: int
    failed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _gx() -> Any:
    """great_expectations, imported on first use (about 2 s): a run's client, which renders no
    index while its workers audit, never imports it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # read at import
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs every import at INFO
    import great_expectations as gx

    # one module sets its own logger to INFO at import, to announce each ephemeral context's temporary folder
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    return gx


@functools.cache
def _batch_definition() -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = _gx().get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("slideaudit").add_dataframe_asset("table")
    return asset.add_batch_definition_whole_dataframe("whole")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic)
                                 else str(v)))


def _failure(result: Any) -> dict[str, Any]:
    config, outcome = result.expectation_config, result.result or {}
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    record = {"expectation": config.type, "kwargs": kwargs,
              "observed": outcome.get("observed_value"),
              "unexpected_count": outcome.get("unexpected_count"),
              "examples": (outcome.get("partial_unexpected_list") or [])[:MAX_LISTED],
              "rows": (outcome.get("unexpected_index_list") or [])[:MAX_ROWS],
              "error": (result.exception_info or {}).get("exception_message")}
    return _jsonable(record)


def run_suite(name: str, table: pd.DataFrame, expectations: list[Any]) -> SuiteResult:
    """Validate `table` against `expectations` as the suite `name`: first pass/fail only (cheap);
    a suite that fails runs again with COMPLETE results to record what was observed."""
    suite = _gx().ExpectationSuite(name=name, expectations=expectations)
    with _lock:
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": table})
        outcome = batch.validate(suite, result_format="BOOLEAN_ONLY")
        if not outcome.success:
            outcome = batch.validate(suite, result_format="COMPLETE")
    failed = [_failure(r) for r in outcome.results if not r.success]
    return SuiteResult(name, not failed, len(outcome.results), failed)


def validate_coords(coords: np.ndarray, dimensions: tuple[int, int]) -> SuiteResult:
    """Patch top-left corners (N, 2) level-0 x, y: inside the slide (W, H) and unique."""
    E = _gx().expectations
    width, height = dimensions
    table = pd.DataFrame(np.asarray(coords).reshape(-1, 2), columns=["x", "y"])
    return run_suite("patches.coords", table, [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="x"),
        E.ExpectColumnValuesToNotBeNull(column="y"),
        E.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=width - 1),
        E.ExpectColumnValuesToBeBetween(column="y", min_value=0, max_value=height - 1),
        E.ExpectCompoundColumnsToBeUnique(column_list=["x", "y"]),
    ])


def validate_attention(attention: np.ndarray, n_patches: int) -> SuiteResult:
    """A-MIL attention (N,): one finite value per patch, each in [0, 1], summing to 1 ± 1e-3."""
    E = _gx().expectations
    table = pd.DataFrame({"attention": np.asarray(attention, np.float64).ravel()})
    return run_suite("explain.attention", table, [
        E.ExpectTableRowCountToEqual(value=int(n_patches)),
        E.ExpectColumnValuesToNotBeNull(column="attention"),
        E.ExpectColumnValuesToBeBetween(column="attention", min_value=0, max_value=1),
        E.ExpectColumnSumToBeBetween(column="attention", min_value=1 - ATTENTION_SUM_TOLERANCE,
                                     max_value=1 + ATTENTION_SUM_TOLERANCE),
    ])


def map_stats(heatmaps: dict[str, np.ndarray], tissue: np.ndarray,
              ranges: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """One row per float map: non-finite pixels on tissue, finite pixels off tissue, min and
    max on tissue, and the range [lower, upper] the map must stay in."""
    rows = []
    for name, values in heatmaps.items():
        values = np.asarray(values)
        on = values[tissue]
        finite = on[np.isfinite(on)]
        lower, upper = ranges[name]
        rows.append({"map": name, "nonfinite_on_tissue": int(on.size - finite.size),
                     "finite_off_tissue": int(np.isfinite(values[~tissue]).sum()),
                     "min": float(finite.min()) if finite.size else lower,
                     "max": float(finite.max()) if finite.size else upper,
                     "lower": float(lower), "upper": float(upper)})
    return pd.DataFrame(rows)


def validate_maps(stats: pd.DataFrame) -> SuiteResult:
    """Stitched maps (`map_stats`): finite on tissue, NaN off it, within [lower, upper]."""
    E = _gx().expectations
    return run_suite("maps", stats, [
        E.ExpectColumnValuesToBeBetween(column="nonfinite_on_tissue", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="finite_off_tissue", min_value=0, max_value=0),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="min", column_B="lower", or_equal=True),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="upper", column_B="max", or_equal=True),
    ])


def validate_audit_table(table: pd.DataFrame, metrics: dict[str, tuple[float, float]]) -> SuiteResult:
    """audit.csv: one row per slide x method, every metric within its registered range
    ({name: (low, high)}; n/a allowed)."""
    E = _gx().expectations
    return run_suite("audit.csv", table, [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectColumnValuesToNotBeNull(column="slide_id"),
        E.ExpectColumnValuesToNotBeNull(column="method"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["slide_id", "method"]),
        *[E.ExpectColumnValuesToBeBetween(column=m, min_value=low, max_value=high)
          for m, (low, high) in metrics.items()],
    ])
