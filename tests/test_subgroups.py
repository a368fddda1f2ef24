"""Subgroup rates by manifest column (`run --group-by`): hand-computed cases, the index and the CSV."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.audit.subgroups import subgroup_table
from reports.html import render_index
from tiling.archive import group_values, read_archive
from tiling.errors import ArchiveError
from tiling.store import SUBGROUPS_CSV

# (slide_id, label, prediction, ink, site)
SLIDES = [("a", 0, 0, "1", "x"), ("b", 0, 1, "1", "x"), ("c", 0, 1, "1", "y"), ("d", 1, 1, "1", "y"),
          ("e", 1, 0, "0", "y"), ("f", 1, 1, "0", "x"), ("g", 0, 0, "0", ""), ("h", None, 1, "0", "x")]


def test_rates_and_counts_per_value_are_hand_computed() -> None:
    audits = [{"slide_id": s, "label": label, "prediction": p} for s, label, p, _, _ in SLIDES]
    groups = {s: {"ink": ink, "site": site} for s, _, _, ink, site in SLIDES}
    table = subgroup_table(audits, groups, ["ink", "site"]).set_index(["column", "value"])
    inked, clean = table.loc[("ink", "1")], table.loc[("ink", "0")]
    # ink 1: a b c negatives (b, c called positive), d positive and right
    assert (inked.slides, inked.labelled, inked.correct) == (4, 4, 2) and inked.accuracy == 0.5
    assert (inked.false_positives, inked.negatives) == (2, 3) and inked.false_positive_rate == pytest.approx(2 / 3)
    assert (inked.false_negatives, inked.positives, inked.false_negative_rate) == (0, 1, 0.0)
    # ink 0: e missed, f right, g right, h unlabelled (counted in slides only)
    assert (clean.slides, clean.labelled, clean.correct) == (4, 3, 2)
    assert clean.false_negative_rate == 0.5 and clean.false_positive_rate == 0.0
    assert table.loc[("site", "(empty)")].slides == 1  # an empty cell is its own group
    unlabelled = subgroup_table(audits[-1:], groups, ["ink"]).iloc[0]
    assert unlabelled.slides == 1 and np.isnan(unlabelled.accuracy)  # no labelled slide: n/a, not 0


def test_index_and_csv_show_the_subgroups(report_archive: dict[str, Path], tmp_path: Path) -> None:
    out = shutil.copytree(report_archive["index"].parent, tmp_path / "out")
    from fake_stores import EVIL

    groups = {"CMU-1 positive": {"scanner": "Aperio"}, EVIL: {"scanner": "<b>evil</b>"}}
    index, _ = render_index(out, ("scanner",), groups)
    table = pd.read_csv(out / SUBGROUPS_CSV)
    assert table[["column", "value", "slides", "accuracy"]].values.tolist() == [
        ["scanner", "<b>evil</b>", 1, 1.0], ["scanner", "Aperio", 1, 1.0]]
    html = index.read_text()
    section = html[html.index('id="subgroups"'):html.index("</section>", html.index('id="subgroups"'))]
    assert "Aperio" in section and "&lt;b&gt;evil&lt;/b&gt;" in section and "<b>evil" not in section
    assert "1.00 (1/1)" in section and "n/a (0/0)" in section  # no negatives among Aperio's slides
    assert 'id="subgroups"' not in render_index(out)[0].read_text()


def test_an_unknown_column_names_the_manifests_columns(sample_archive: Path, tmp_path: Path) -> None:
    records = read_archive(sample_archive, ["normal", "tumor"])
    assert group_values(records, ["ink"]) == {  # the generator inks slides 0, 1, 4, 5, ...
        "sample_000": {"ink": "1"}, "sample_001": {"ink": "1"}, "sample_002": {"ink": "0"}, "sample_003": {"ink": "0"}}
    with pytest.raises(ArchiveError, match="--group-by scanner: no such manifest column; its columns are "
                                           "slide_id, path, label, annotation, annotation_xml, ink"):
        group_values(records, ["ink", "scanner"])
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(read_archive(sample_archive)[0].path, folder)
    with pytest.raises(ArchiveError, match="a folder archive has no columns"):
        group_values(read_archive(folder), ["ink"])
