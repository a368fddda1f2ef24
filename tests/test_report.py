"""The audit stage (audit.json), the slide report and the archive index on small real stores."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import zipfile
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from fake_stores import EVIL, make_slide_case, real_slide
from pipeline.cli import main
from reports.audit.config import AuditConfig
from reports.audit.registry import ARTEFACT_METRICS, metrics_for
from reports.audit.stage import audit_slide
from reports.html import number, percent, render_index, render_slide_report
from reports.table import scan
from tiling.config import StitchConfig
from tiling.errors import StoreError
from tiling.stitch import stitch_slide
from tiling.store import AUDIT, file_sha256, is_current, read_stamp, seal_store
from tiling.store.records import AUDIT_VERSION, load_audit


@pytest.fixture
def archive(report_archive: dict[str, Path]) -> dict[str, Path]:
    return report_archive


def sources(html: str, attribute: str) -> list[str]:
    return re.findall(rf'{attribute}="([^"]*)"', html)


def test_audit_json_records_metrics_flags_validation_provenance(archive) -> None:
    audit = load_audit(archive["positive"])
    assert audit["slide_id"] == "CMU-1 positive" and audit["label"] == 1
    assert audit["prediction"] == 1 and audit["prediction_name"] == "tumor"
    assert sum(audit["probabilities"].values()) == pytest.approx(1.0)
    assert audit["methods"] == ["attention", "gradcam", "hirescam"]
    gradcam, hirescam = audit["metrics"]["gradcam"], audit["metrics"]["hirescam"]
    assert gradcam["auroc"]["value"] > 0.95 and gradcam["pointing_game"]["value"] == 1.0
    assert hirescam["pointing_game"]["value"] == 0.0 and hirescam["auroc"]["value"] < 0.6
    assert all(m["preprocessing"] for m in gradcam.values())
    assert "clipped" in gradcam["relevance_mass"]["preprocessing"]
    flags = {f["flag"]: f for f in audit["flags"]}
    assert flags["focus_outside_lesion"]["methods"] == ["hirescam"]
    assert "attention~hirescam" in flags["methods_disagree"]["methods"]
    assert "prediction_wrong" not in flags
    pair = next(p for p in audit["agreement"] if (p["a"], p["b"]) == ("attention", "gradcam"))
    assert pair["spearman"] > 0.8
    assert [s["suite"] for s in audit["validation"]] == ["patches.coords", "explain.attention",
                                                          "maps"]
    assert all(s["success"] for s in audit["validation"])
    prov = audit["provenance"]
    assert prov["versions"]["torch"] == metadata.version("torch")
    assert set(prov["versions"]) >= {"slideaudit", "monai", "openslide-python"}
    assert prov["model"]["sha256"] == "0" * 64 and prov["model"]["config"]["encoder"] == "small_cnn"
    assert prov["source_sha256"] == file_sha256(real_slide())
    assert prov["config_hash"] == audit["stamp"]["config_hash"]
    assert datetime.fromisoformat(prov["run_at"]).utcoffset().total_seconds() == 0
    assert audit["peaks"]["gradcam"][0]["lesion"] == "Tumor 1"
    assert audit["lesions"]["classes"] == {"lesion": ["Tumor"], "exclusion": [], "ignored": []}
    assert len(audit["top_patches"]) == AuditConfig().top_patches


def test_negative_slide_has_na_lesion_metrics_and_shows_focus(archive) -> None:
    audit = load_audit(archive["evil"])
    assert audit["slide_id"] == EVIL and audit["lesions"]["on_tissue"] == 0
    on_artefacts = {m.name for m in ARTEFACT_METRICS}
    assert all(s["value"] is None for m in audit["metrics"].values() for n, s in m.items() if n not in on_artefacts)
    assert all(m[n]["value"] is not None for m in audit["metrics"].values() for n in on_artefacts)  # every slide
    assert all(audit["peaks"][m] for m in audit["methods"])
    html = (archive["evil"] / "report.html").read_text()
    assert "No annotated lesion lies on this slide" in html and "n/a" in html


def test_audit_skips_when_current_and_reruns_when_settings_change(archive, tmp_path) -> None:
    slide_dir = tmp_path / "positive"
    shutil.copytree(archive["positive"], slide_dir)
    path = slide_dir / AUDIT
    before = path.stat().st_mtime_ns
    audit_slide(slide_dir, 1, AuditConfig())
    assert path.stat().st_mtime_ns == before
    audit_slide(slide_dir, 0, AuditConfig())  # a new label: recomputed, now wrong
    assert "prediction_wrong" in {f["flag"] for f in load_audit(slide_dir)["flags"]}
    stamp = load_audit(slide_dir)["stamp"]
    audit_slide(slide_dir, 0, AuditConfig(tolerance_um=0.0))
    assert load_audit(slide_dir)["stamp"] != stamp


def test_slide_report_is_self_contained_and_escaped(archive) -> None:
    html = (archive["positive"] / "report.html").read_text()
    images = sources(html, "src")
    assert images and all(src.startswith("data:image/") for src in images)
    assert not re.search(r'(href|src)="(https?:)?//', html)
    assert html.count('class="overlay"') == 3
    assert "CMU-1 positive" in html and "Tumor 1" in html
    assert "counted as lesions: Tumor" in html
    evil = (archive["evil"] / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in evil and EVIL not in evil


def test_the_summary_table_shows_the_metrics_its_registry_names(archive) -> None:
    html = (archive["positive"] / "report.html").read_text()
    glance = html[html.index('<table id="glance">'):]
    glance = glance[:glance.index("</table>")]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", glance)
    shown = [m for m in metrics_for(AuditConfig()).values() if m.summary]
    assert headers == ["Method", "Strongest focus (x, y)", *(m.summary for m in shown)]
    audit = load_audit(archive["positive"])
    rows = re.findall(r"<tr>(.*?)</tr>", glance, re.S)[1:]
    assert len(rows) == len(audit["methods"])
    for method, row in zip(audit["methods"], rows, strict=True):
        auroc = audit["metrics"][method]["auroc"]["value"]
        assert f'<td class="num">{number(auroc)}</td>' in row


def test_index_and_csv_list_every_slide_and_failure(archive, tmp_path) -> None:
    table = pd.read_csv(archive["csv"])
    assert len(table) == 2 * 3
    assert table.groupby(["slide_id", "method"]).size().max() == 1
    assert set(table["slide_id"]) == {"CMU-1 positive", EVIL}
    assert list(table.columns[:5]) == ["slide_id", "label", "prediction", "verdict", "method"]
    assert table.loc[table["slide_id"] == EVIL, "auroc"].isna().all()
    hirescam = table[(table["slide_id"] == "CMU-1 positive") & (table["method"] == "hirescam")]
    assert "focus_outside_lesion" in hirescam["flags"].iloc[0]
    html = archive["index"].read_text()
    assert "failed at tile" in html and "not a slide format OpenSlide can read" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and EVIL not in html
    assert all(src.startswith("data:image/") for src in sources(html, "src"))
    out = archive["index"].parent
    for folder in ("positive", "evil"):  # each row's picture: the file its report wrote, embedded
        jpeg = (out / "slides" / folder / "thumbnail.jpg").read_bytes()
        assert max(Image.open(io.BytesIO(jpeg)).size) == 96 and base64.b64encode(jpeg).decode() in html
    zipped = shutil.make_archive(str(tmp_path / "archive"), "zip", out)
    with zipfile.ZipFile(zipped) as z:
        z.extractall(tmp_path / "unzipped")
    links = [h for h in sources(html, "href") if not h.startswith("#")]
    served = [h for h in links if h.endswith("/viewer/")]  # pages that `slideaudit serve --reports` makes
    links = [h for h in links if h not in served]
    assert "audit.csv" in links and len(links) == 3 and served == ["slides/evil/viewer/", "slides/positive/viewer/"]
    for link in links:  # relative links resolve inside the unzipped folder
        assert (tmp_path / "unzipped" / link.replace("%20", " ")).is_file(), link


def test_corrupted_table_fails_its_suite_and_the_index_says_so(archive, tmp_path) -> None:
    out = tmp_path / "archive"
    shutil.copytree(archive["index"].parent, out)
    path = out / "slides" / "positive" / AUDIT
    audit = json.loads(path.read_text())
    audit["metrics"]["gradcam"]["relevance_mass"]["value"] = 1.7
    path.write_text(json.dumps(audit))
    index, csv = render_index(out)
    html = index.read_text()
    assert "The audit table failed its check" in html and "Table check failed" in html
    assert "relevance_mass" in html.split('id="checks"')[1]
    assert pd.read_csv(csv)["relevance_mass"].max() == pytest.approx(1.7)


def test_an_audit_json_of_another_format_version_is_refused_and_redone(archive, tmp_path) -> None:
    out = tmp_path / "archive"
    shutil.copytree(archive["index"].parent, out)
    path = out / "slides" / "positive" / AUDIT
    audit = json.loads(path.read_text())
    assert audit.pop("format_version") == AUDIT_VERSION
    path.write_text(json.dumps(audit))
    with pytest.raises(StoreError, match=r"audit\.json: format version None.*run the audit stage"):
        load_audit(path)
    assert [u.split(":")[0] for u in scan(out).unreadable] == ["positive/audit.json"]
    assert not is_current(path, **read_stamp(path))
    audit_slide(path.parent, 1, AuditConfig())
    assert load_audit(path)["format_version"] == AUDIT_VERSION and is_current(path, **read_stamp(path))


def test_corrupted_attention_fails_its_suite_and_the_report_says_so(tmp_path) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "doubled")
    attention = zarr.open_group(slide_dir / "explain.zarr", mode="r+")["attention"]
    attention[:] = np.asarray(attention[:]) * 2  # sums to 2
    seal_store(slide_dir / "explain.zarr")  # edited on purpose, not damaged
    stitch_slide(slide_dir, annotations, StitchConfig(max_side=256))
    audit = load_audit(audit_slide(slide_dir, 1, AuditConfig()))
    suites = {s["suite"]: s for s in audit["validation"]}
    assert not suites["explain.attention"]["success"]
    assert suites["explain.attention"]["failed"][0]["observed"] == pytest.approx(2.0, rel=1e-4)
    assert "validation_failed" in {f["flag"] for f in audit["flags"]}
    html = render_slide_report(slide_dir).read_text()
    validation = html.split('id="validation"')[1]
    assert "failed" in validation and "explain.attention" in validation
    assert "expect_column_sum_to_be_between" in validation


def test_report_command_rebuilds_the_index(archive, tmp_path) -> None:
    out = tmp_path / "archive"
    shutil.copytree(archive["index"].parent, out)
    (out / "index.html").unlink()
    result = CliRunner().invoke(main, ["report", str(out), "--slides"])
    assert result.exit_code == 0, result.output
    assert "re-rendered 2 slide report(s)" in result.output and (out / "index.html").is_file()
    shutil.rmtree(out / "slides" / "positive" / "maps.zarr")
    result = CliRunner().invoke(main, ["report", str(out), "--slides"])
    assert result.exit_code == 3
    assert "maps.zarr: no complete maps store" in result.output
    assert "Traceback" not in result.output


def keep_first(slide_dir: Path, k: int) -> None:
    """Rewrite patches.zarr and explain.zarr with their first `k` patches only (the per-slide
    slide_logits and thumbnail stay whole)."""
    for store in ("patches.zarr", "explain.zarr"):
        group = zarr.open_group(slide_dir / store, mode="r")
        arrays = {name: np.asarray(group[name][:]) for name in group.array_keys()}
        attrs = dict(group.attrs)
        fresh = zarr.open_group(slide_dir / store, mode="w", zarr_format=3)
        for name, data in arrays.items():
            fresh.create_array(name, data=data if name in ("slide_logits", "thumbnail", "artefacts") else data[:k])
        fresh.attrs.update(attrs)
    if k:
        explain = zarr.open_group(slide_dir / "explain.zarr", mode="r+")
        explain["attention"][:] = np.full(k, 1 / k, np.float32)
    for store in ("patches.zarr", "explain.zarr"):
        seal_store(slide_dir / store)  # rewritten on purpose, not damaged


@pytest.mark.parametrize("k", [0, 1])
def test_slides_with_no_or_one_patch_are_audited_and_reported(tmp_path, k) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, f"tiny{k}")
    keep_first(slide_dir, k)
    stitch_slide(slide_dir, annotations, StitchConfig(max_side=256))
    audit = load_audit(audit_slide(slide_dir, 1, AuditConfig()))
    suites = {s["suite"]: s["success"] for s in audit["validation"]}
    assert suites["patches.coords"] == (k > 0) and suites["explain.attention"] == (k > 0)
    assert audit["metrics"]["gradcam"]["auroc"]["value"] is None  # the lesion is off its tissue
    assert len(audit["top_patches"]) == k
    html = render_slide_report(slide_dir).read_text()
    assert 'class="overlay"' in html


def test_index_of_an_empty_archive(tmp_path) -> None:
    index, csv = render_index(tmp_path)
    assert "No audited slide yet" in index.read_text()
    assert csv.read_text().strip() == "slide_id,label,prediction,verdict,method,deletion_area,flags,report"


def test_slide_report_shows_what_the_model_learnt(archive, tmp_path) -> None:
    from PIL import Image
    slide = tmp_path / "slide"
    shutil.copytree(archive["positive"], slide)
    impressions = {}
    for i, name in enumerate(["normal", EVIL]):
        impressions[name] = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 60 * (i + 1), np.uint8)).save(impressions[name])
    html = render_slide_report(slide, impressions).read_text()
    section = html[html.index('id="learnt"'):html.index('id="provenance"')]
    assert section.count("<img") == 2 and "normal" in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section and EVIL not in section
    assert 'id="learnt"' not in (archive["positive"] / "report.html").read_text()


@pytest.mark.parametrize(("p", "logit", "text"), [
    (0.999999, 13.8, "> 99.99 % (logit 13.8)"), (1.0, None, "> 99.99 %"), (0.99984, None, "99.98 %"),
    (0.5, 0.0, "50.00 % (logit 0)"), (0.00001, -11.5, "< 0.01 % (logit -11.5)"), (0.0, None, "< 0.01 %"),
    (None, None, "n/a")])
def test_percent_never_rounds_a_probability_to_certainty(p, logit, text) -> None:
    assert percent(p, logit) == text


def test_a_saturated_prediction_shows_its_bound_and_logit_in_report_and_index(tmp_path) -> None:
    slide_dir, annotations = make_slide_case(tmp_path, "sure", logits=(-12.0, 12.0))
    stitch_slide(slide_dir, annotations, StitchConfig(max_side=256))
    audit = load_audit(audit_slide(slide_dir, 1, AuditConfig()))
    assert audit["logits"] == {"normal": -12.0, "tumor": 12.0}
    report = render_slide_report(slide_dir).read_text()
    index = render_index(tmp_path)[0].read_text()
    prob = r'<div class="prob"><span>[^<]*</span><span class="bar">.*?</span></span><span>([^<]*)</span>'
    shown = re.findall(prob, report)
    assert shown == ["&lt; 0.01 % (logit -12)", "&gt; 99.99 % (logit 12)"]
    assert '<span class="hint">&gt; 99.99 % (logit 12)</span>' in index


def test_report_and_index_say_what_to_do_next(archive) -> None:
    html = (archive["positive"] / "report.html").read_text()
    audit = load_audit(archive["positive"])
    assert audit["verdict"] == "REVIEW"
    step = re.search(r'<span id="next-step"><strong>Next step:</strong> ([^<]*)</span>', html)[1]
    assert step.startswith("compare the HiResCAM map with the lesion outline")  # the flag that made it REVIEW
    index = archive["index"].read_text()
    assert index.count('class="hint next-step"') == 2  # the REVIEW row and the failure group, not the PASS row
    assert step in index
    assert "Next step: fix what the message names, then re-run: slideaudit -v run" in index


def test_metric_shading_is_blue_or_orange_with_a_symbol() -> None:
    from reports.html import grade, shade

    good, poor, middle = shade(0.95, "auroc"), shade(0.05, "auroc"), shade(0.5, "auroc")
    rgb = {name: [int(c) for c in re.findall(r"\d+", css)] for name, css in
           (("good", good), ("poor", poor), ("middle", middle))}
    assert rgb["good"][2] > rgb["good"][0] and rgb["poor"][0] > rgb["poor"][2]  # blue, orange: never red/green
    assert rgb["middle"] == [255, 255, 255] and shade(None) == shade(float("nan")) == "transparent"
    assert (grade(0.95, "auroc"), grade(0.05, "auroc"), grade(0.5, "auroc"), grade(None)) == ("▲", "▼", "", "")
    assert shade(0.05, "artefact_mass") == good and grade(0.05, "artefact_mass") == "▲"  # low is good


def test_failures_are_grouped_by_reason_with_class_names(archive, tmp_path) -> None:
    from reports.html import failure_groups

    failures = [{"folder": f"f{i}", "slide_id": f"slide-{i}", "stage": "tile", "label": 1,
                 "source_path": f"/data/slide-{i}.svs", "message": f"/data/slide-{i}.svs: no such file; fix the path"}
                for i in range(7)]
    failures.append({"folder": "g", "slide_id": "odd", "stage": "explain", "label": None, "message": "NaN logits"})
    groups = failure_groups(failures, ["normal", "lesion"])
    assert [(g["stage"], g["reason"], len(g["slides"])) for g in groups] == [
        ("tile", "<slide>: no such file; fix the path", 7), ("explain", "NaN logits", 1)]
    assert groups[0]["slides"][0] == {"slide_id": "slide-0", "label": "lesion"}
    html = archive["index"].read_text()
    assert 'id="failures-table"' in html and "<span class=\"failed-id\">broken-slide</span>" in html


def test_the_index_inlines_the_thumbnail_its_report_wrote(archive, tmp_path) -> None:
    from PIL import Image

    from reports.figures import file_data_uri
    from tiling.store.names import ROW_THUMBNAIL

    out = tmp_path / "archive"
    shutil.copytree(archive["index"].parent, out)
    thumbnail = out / "slides" / "positive" / ROW_THUMBNAIL
    assert max(Image.open(thumbnail).size) == 96
    (out / "slides" / "evil" / ROW_THUMBNAIL).unlink()  # as an OUT of an older version
    html = render_index(out)[0].read_text()
    assert f'src="{file_data_uri(thumbnail, "image/jpeg")}" alt="thumbnail of CMU-1 positive"' in html
    assert 'alt="thumbnail of &lt;script&gt;alert(1)&lt;/script&gt;"' in html  # made from its maps instead
    assert not (out / "slides" / "evil" / ROW_THUMBNAIL).exists()  # the index writes nothing into a slide
    report = out / "slides" / "evil" / "report.html"
    before = report.stat().st_mtime_ns
    render_slide_report(out / "slides" / "evil")  # current: kept, its missing thumbnail written
    assert report.stat().st_mtime_ns == before and (out / "slides" / "evil" / ROW_THUMBNAIL).is_file()
