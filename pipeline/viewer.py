"""Routes of the deep-zoom viewer that `slideaudit serve --reports OUT` adds.

    GET /reports/slides/<id>/viewer/                                     the page (reports.overlays)
    GET /reports/slides/<id>/viewer/slide_files/<level>/<col>_<row>.jpeg slide tiles (OpenSlide)
    GET /reports/slides/<id>/viewer/layers/<map>_files/<level>/<c>_<r>.png overlay tiles of maps.zarr
    GET /reports/slides/<id>/viewer/smooth/<map>_files/<level>/<c>_<r>.png  the same, interpolated
    GET /reports/slides/<id>/viewer/lesions.geojson                      the lesion polygons (level-0 px)
    GET /static/...                                                      OpenSeadragon, the viewer's JS/CSS

<id> is the slide's folder under OUT/slides, so report.html links to its viewer as "viewer/".

Everything is served from the package and OUT: no network. A slide id must be a plain folder name
whose folder resolves inside OUT (404 otherwise, 403 for a symlink out); unknown ids, maps and
tiles are 404; an answer never shows where OUT lies on the server (paths are given relative to
it). Opened slides are kept in a small LRU cache. The page lists the slides under OUT/slides
that have maps (`viewable`), for the slide list and next / previous.
"""
from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from reports.overlays import SlideView
from reports.viewer_page import viewer_page
from tiling.archive import check_slide_id
from tiling.errors import ArchiveError, AuditError
from tiling.store import MAPS, PATCHES, slide_dir
from tiling.store.lesions import lesion_polygons_path

log = logging.getLogger(__name__)

STATIC_URL = "/static/"
OPEN_SLIDES = 8
JPEG_QUALITY = 85
VIEWER_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                             "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                                             "frame-ancestors 'none'",
                  "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
TILE_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def public(message: str, out: Path) -> str:
    """`message` with OUT's location on the server left out: paths under it given relative to it."""
    for root in {str(Path(out).resolve()), str(Path(out).absolute())}:
        message = message.replace(root + "/", "").replace(root, "the reports folder")
    return message


def viewable(out: Path) -> list[str]:
    """The slide folders under OUT/slides with tiles and maps, sorted by name."""
    folder = Path(out) / "slides"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / PATCHES).is_dir() and (p / MAPS).is_dir())


def slide_folder(out: Path, slide_id: str) -> Path:
    """OUT/slides/<slide_id>, resolved; HTTP 404 when the id is not a plain folder name or no
    tiled slide is there, 403 when the folder resolves outside OUT (a symlink out)."""
    try:
        check_slide_id(slide_id, "viewer")
    except ArchiveError as exc:
        raise HTTPException(404, f"no slide {slide_id!r} here") from exc
    root = Path(out).resolve()
    folder = slide_dir(root, slide_id).resolve()
    if not folder.is_relative_to(root):
        raise HTTPException(403, f"slide {slide_id!r} lies outside the reports folder")
    if not (folder / PATCHES).is_dir():
        raise HTTPException(404, f"no slide {slide_id!r} in the reports; open one listed in the archive index")
    return folder


class OpenSlides:
    """SlideViews of OUT's slides, opened on first use, at most `size` kept (least recently used closed)."""

    def __init__(self, out: Path, size: int = OPEN_SLIDES) -> None:
        self.out, self.size = Path(out), size
        self._views: OrderedDict[str, SlideView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, slide_id: str) -> SlideView:
        """The slide's view; HTTPException 404/403 (`slide_folder`) or 404 naming what is missing."""
        folder = slide_folder(self.out, slide_id)
        with self._lock:
            if slide_id in self._views:
                self._views.move_to_end(slide_id)
                return self._views[slide_id]
            try:
                view = SlideView(folder)
            except AuditError as exc:
                log.warning("viewer: %s", exc)
                raise HTTPException(404, public(str(exc), self.out)) from exc
            self._views[slide_id] = view
            if len(self._views) > self.size:
                self._views.popitem(last=False)[1].close()
            return view


def viewer_routes(out: Path) -> list[BaseRoute]:
    """The viewer's routes for the audit output folder `out` (module docstring)."""
    slides = OpenSlides(out)

    async def page(request: Request) -> Response:
        folder = request.path_params["slide_id"]
        view = await run_in_threadpool(slides.get, folder)
        html = await run_in_threadpool(viewer_page, view, folder, viewable(out), STATIC_URL)
        return HTMLResponse(html, headers=VIEWER_HEADERS)

    def lesion_file(slide_id: str) -> Path:
        try:
            return lesion_polygons_path(slide_folder(out, slide_id))
        except AuditError as exc:
            raise HTTPException(404, public(str(exc), out)) from exc

    async def lesions(request: Request) -> Response:
        path = await run_in_threadpool(lesion_file, request.path_params["slide_id"])
        return FileResponse(path, media_type="application/geo+json", headers=TILE_HEADERS)

    def jpeg(slide_id: str, level: int, col: int, row: int) -> bytes:
        tile = slides.get(slide_id).tiles.tile(level, col, row)
        if tile is None:
            raise HTTPException(404, "no such tile")
        buffer = io.BytesIO()
        tile.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()

    def png(slide_id: str, name: str, level: int, col: int, row: int, smooth: bool = False) -> bytes:
        data = slides.get(slide_id).overlay_tile(name, level, col, row, smooth)
        if data is None:
            raise HTTPException(404, f"no layer {name!r} or no such tile")
        return data

    async def slide_tile(request: Request) -> Response:
        return Response(await run_in_threadpool(jpeg, **request.path_params), media_type="image/jpeg",
                        headers=TILE_HEADERS)

    async def layer_tile(request: Request) -> Response:
        return Response(await run_in_threadpool(png, **request.path_params), media_type="image/png",
                        headers=TILE_HEADERS)

    async def smooth_tile(request: Request) -> Response:
        return Response(await run_in_threadpool(png, **request.path_params, smooth=True), media_type="image/png",
                        headers=TILE_HEADERS)

    tiles = "{level:int}/{col:int}_{row:int}"
    static = StaticFiles(directory=str(resources.files("reports") / "static"))
    return [Mount("/reports/slides/{slide_id}/viewer", routes=[
                Route("/", page),
                Route(f"/slide_files/{tiles}.jpeg", slide_tile),
                Route("/lesions.geojson", lesions),
                Route(f"/layers/{{name}}_files/{tiles}.png", layer_tile),
                Route(f"/smooth/{{name}}_files/{tiles}.png", smooth_tile)]),
            Mount(STATIC_URL.rstrip("/"), static, name="static")]
