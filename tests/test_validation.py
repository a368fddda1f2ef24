"""great-expectations suites at the stage boundaries: good tables pass, corrupted ones fail
and say which expectation and which rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from reports.audit.validation import map_stats, validate_attention, validate_audit_table, validate_coords, validate_maps


def failed(result) -> dict[str, dict]:
    return {f"{f['expectation']}:{f['kwargs'].get('column', '')}": f for f in result.failed}


def test_coords_inside_and_unique() -> None:
    good = validate_coords(np.array([[0, 0], [256, 0], [0, 256]]), (512, 300))
    assert good.success and good.suite == "patches.coords" and good.evaluated == 6
    bad = validate_coords(np.array([[0, 0], [600, 0], [0, 0], [-5, 10]]), (512, 300))
    assert not bad.success
    found = failed(bad)
    assert found["expect_column_values_to_be_between:x"]["examples"] == [600, -5]
    assert found["expect_compound_columns_to_be_unique:"]["rows"] == [0, 2]
    assert "expect_column_values_to_be_between:y" not in found


def test_attention_finite_nonnegative_sums_to_one() -> None:
    assert validate_attention(np.array([0.25, 0.25, 0.5], np.float32), 3).success
    bad = failed(validate_attention(np.array([0.5, 0.5, 1.0]), 3))
    assert set(bad) == {"expect_column_sum_to_be_between:attention"}
    assert bad["expect_column_sum_to_be_between:attention"]["observed"] == 2.0
    bad = failed(validate_attention(np.array([np.nan, 1.5, -0.5]), 4))
    assert {"expect_column_values_to_not_be_null:attention",
            "expect_column_values_to_be_between:attention",
            "expect_table_row_count_to_equal:"} <= set(bad)


def test_maps_finite_on_tissue_and_in_range() -> None:
    tissue = np.array([[True, True, False]])
    ranges = {"attention": (0.0, 1.0), "gradcam": (-1e38, 1e38)}
    good = {"attention": np.array([[0.2, 0.8, np.nan]]), "gradcam": np.array([[-3.0, 9.0, np.nan]])}
    assert validate_maps(map_stats(good, tissue, ranges)).success
    bad = {"attention": np.array([[0.2, 1.8, 0.1]]), "gradcam": np.array([[np.inf, 9.0, np.nan]])}
    stats = map_stats(bad, tissue, ranges)
    assert stats.set_index("map").loc["gradcam", "nonfinite_on_tissue"] == 1
    result = validate_maps(stats)
    kinds = sorted(f["expectation"] for f in result.failed)
    assert kinds == ["expect_column_pair_values_a_to_be_greater_than_b",
                     "expect_column_values_to_be_between", "expect_column_values_to_be_between"]
    assert all(f["rows"] in ([0], [1]) for f in result.failed)


def test_audit_table_one_row_per_slide_and_method() -> None:
    table = pd.DataFrame({"slide_id": ["a", "a", "b"],
                          "method": ["attention", "gradcam", "attention"],
                          "auroc": [0.9, None, 0.4], "relevance_mass": [0.1, 0.2, 1.0]})
    assert validate_audit_table(table, {"auroc": (0, 1), "relevance_mass": (0, 1)}).success
    corrupt = table.copy()
    corrupt.loc[2, "method"] = "gradcam"
    corrupt.loc[2, "slide_id"] = "a"
    corrupt.loc[0, "relevance_mass"] = 1.7
    result = validate_audit_table(corrupt, {"auroc": (0, 1), "relevance_mass": (0, 1)})
    assert not result.success
    found = failed(result)
    assert found["expect_compound_columns_to_be_unique:"]["rows"] == [1, 2]
    assert found["expect_column_values_to_be_between:relevance_mass"]["rows"] == [0]
