"""The deep-zoom viewer's page of one audited slide (a `reports.overlays.SlideView`).

Each pane shows one heat map, its peaks numbered by rank (audit.json "peaks") and, on the
attention maps, the top attended patches numbered by rank; every marker carries its tooltip
(method, rank, value, lesion, artefact). The lesion outlines are vector polygons
(`tiling.store.lesions`) fetched by the page; the artefact mask is a tiled layer. `slides`
lists the archive's viewable slides for the slide list and next / previous.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import numpy as np

from reports import figures as F
from reports.html import environment
from reports.overlays import SlideView, title
from tiling.store.maps import ATTENTION, ATTENTION_RANK, LESION

ATTENTION_MAPS = (ATTENTION, ATTENTION_RANK)   # attention's peaks and top patches show on both


def lesion_words(record: dict[str, Any]) -> str:
    """"on lesion <name>", "<d> µm from lesion <name>" or "no lesion on tissue" for a peak record."""
    if record.get("lesion_um") is None:
        return "no lesion on tissue"
    if record["lesion_um"] == 0:
        return f"on lesion {record['lesion']}"
    return f"{record['lesion_um']:.0f} µm from lesion {record['lesion']}"


def artefact_words(kind: str | None) -> str:
    return f"on an artefact ({kind})" if kind else "on no artefact"


def patch_lesion(view: SlideView, labels: np.ndarray, x: float, y: float, side: float) -> str:
    """"on lesion <name>" when the level-0 box (x, y, side) covers a lesion px of `labels`, else "off the lesions"."""
    d = view.maps.downsample
    box = labels[int(y // d): int(np.ceil((y + side) / d)), int(x // d): int(np.ceil((x + side) / d))]
    found = box[box > 0]
    if found.size == 0:
        return "off the lesions"
    names = [str(n) for n in view.maps.attrs.get("lesion_names", [])]
    k = int(np.bincount(found).argmax())
    return f"on lesion {names[k - 1] if k <= len(names) and names[k - 1] else k}"


def markers(view: SlideView) -> list[dict[str, Any]]:
    """Every map's peaks and the top attended patches: level-0 box, the layers whose pane shows it,
    its rank, a label for the marker list and the tooltip's lines."""
    audit = view.audit
    if audit is None:
        return []
    side = view.footprint or view.maps.downsample
    found = []
    for name, peaks in audit.get("peaks", {}).items():
        for rank, p in enumerate(peaks, start=1):
            found.append({"kind": "peak", "rank": rank, "layers": list(ATTENTION_MAPS if name == ATTENTION else [name]),
                          "label": f"{title(name)} peak {rank}",
                          "x": p["x"] - side / 2, "y": p["y"] - side / 2, "w": side, "h": side,
                          "tip": [f"{title(name)}: peak {rank}", f"value {p['value']:.4g}",
                                  lesion_words(p), artefact_words(p.get("artefact"))]})
    patches = audit.get("top_patches", [])
    labels = view.maps.lesion if patches else np.zeros((0, 0), np.uint16)
    for rank, p in enumerate(patches, start=1):
        found.append({"kind": "patch", "rank": rank, "layers": list(ATTENTION_MAPS),
                      "label": f"Top patch {rank} (attention {p['attention']:.3f})",
                      "x": p["x"], "y": p["y"], "w": side, "h": side,
                      "tip": [f"{title(ATTENTION)}: top patch {rank}", f"attention {p['attention']:.4g}",
                              patch_lesion(view, labels, p["x"], p["y"], side), artefact_words(p.get("artefact"))]})
    return found


def slide_links(slides: list[str], current: str) -> dict[str, Any]:
    """The slide list as page links (relative to this viewer) and the index of `current` in it."""
    return {"ids": slides, "urls": [f"../../{quote(s, safe='')}/viewer/" for s in slides],
            "current": slides.index(current) if current in slides else -1}


def viewer_page(view: SlideView, folder: str, slides: list[str], static: str) -> str:
    """The viewer page of `view` (the slide folder `folder`); `slides`: the viewable slide folders
    in order; `static`: URL of the package's static folder."""
    heat = [n for n, kind in view.layers.items() if kind == "heat"]
    links = slide_links(slides, folder)
    masks = [n for n, kind in view.layers.items() if kind == "label"]
    config = {
        "slide": {"url": "slide_files/", "width": view.grid.width, "height": view.grid.height,
                  "tileSize": view.grid.tile_size, "overlap": view.grid.overlap, "mpp": view.mpp},
        "heat": heat, "masks": masks, "lesions": "lesions.geojson", "outline": LESION,
        "legend": {n: view.legend(n) for n in heat},
        "markers": markers(view), "slides": links,
        "left": ATTENTION, "right": view.maps.methods[0] if view.maps.methods else ATTENTION_RANK,
        "static": static,
    }
    return environment().get_template("viewer.html").render(
        slide_id=view.slide_id, static=static, verdict=(view.audit or {}).get("verdict"),
        heat=[(n, title(n)) for n in heat], labels=[(n, title(n)) for n in (LESION, *masks)],
        slides=list(zip(links["ids"], links["urls"], strict=True)), current=links["current"],
        gradient=F.css_gradient(), config=json.dumps(config))
