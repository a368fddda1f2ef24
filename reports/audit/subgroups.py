"""Subgroup rates: how the model fares on each value of a manifest column (ink, scanner, site...),
the bias audit a model card asks for. Written to OUT/subgroups.csv and shown in the index.

Over the audited slides with a label, per value of each column (class 0 is the negative class,
every other class positive, as for `label_annotation_mismatch`):

    accuracy            = correct / labelled              (prediction == label)
    false_positive_rate = false_positives / negatives     (label 0, predicted > 0)
    false_negative_rate = false_negatives / positives     (label > 0, predicted 0)

each beside its counts; a rate with a zero denominator is empty (n/a). Slides without a label
count in `slides` only.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

EMPTY = "(empty)"  # the value shown for an empty manifest cell
RATES = {"accuracy": ("correct", "labelled"), "false_positive_rate": ("false_positives", "negatives"),
         "false_negative_rate": ("false_negatives", "positives")}
COLUMNS = ["column", "value", "slides", "labelled", "accuracy", "correct", "false_positive_rate",
           "false_positives", "negatives", "false_negative_rate", "false_negatives", "positives"]


def _slides(audits: list[dict[str, Any]], groups: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One row per audited slide in `groups`: its group values and 0/1 outcome columns."""
    rows = []
    for audit in audits:
        if audit.get("slide_id") not in groups:
            continue
        label, predicted = audit.get("label"), audit.get("prediction")
        outcome = dict.fromkeys(("labelled", "correct", "negatives", "positives",
                                 "false_positives", "false_negatives"), 0)
        if label is not None:
            positive, called = label > 0, predicted is not None and predicted > 0
            outcome.update(labelled=1, correct=int(predicted == label), negatives=int(not positive),
                           positives=int(positive), false_positives=int(not positive and called),
                           false_negatives=int(positive and not called))
        rows.append({**{c: v or EMPTY for c, v in groups[audit["slide_id"]].items()}, **outcome})
    return pd.DataFrame(rows)


def subgroup_table(audits: list[dict[str, Any]], groups: dict[str, dict[str, str]],
                   by: list[str]) -> pd.DataFrame:
    """The module docstring's rates and counts per (column, value) of `by`, from the audits'
    labels and predictions and `groups` ({slide_id: {column: value}}, `tiling.archive.group_values`)."""
    slides = _slides(audits, groups)
    if slides.empty:
        return pd.DataFrame(columns=COLUMNS)
    counts = [c for c in slides.columns if c not in by]
    parts = []
    for column in by:
        part = slides.groupby(column, sort=True)[counts].sum()
        part.insert(0, "slides", slides.groupby(column, sort=True).size())
        for rate, (hits, total) in RATES.items():
            part[rate] = (part[hits] / part[total].where(part[total] > 0)).astype("float64")
        parts.append(part.rename_axis("value").reset_index().assign(column=column))
    return pd.concat(parts, ignore_index=True)[COLUMNS]
