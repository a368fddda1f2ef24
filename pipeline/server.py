"""`slideaudit serve`: a local web page to explain uploaded images, and the audit reports.

Routes: GET / (the upload form), POST /explain (multipart: image or image_id, target, method,
mpp -> the page with the top 5 and the overlays), GET /healthz, and, with `reports`, GET
/reports/... (the audit's static files, read-only; Starlette's StaticFiles refuses paths outside
the folder) and the deep-zoom viewer (pipeline.viewer). Without a model only the reports and the
viewer are served.

Uploads are read into memory, at most `max_upload_mb` (413 beyond), never spooled or written to
disk; at most `max_requests` explanations run or wait at once (503 beyond); a POST whose Origin
is another site is refused (403). The image's size is read from its header and refused beyond
`max_pixels` (413) before any decoding; decoding and the model run one request at a time. A file
that is not a PNG/JPEG/TIFF image or has an unsupported mode gets 415, bad form values 400.
The last `kept_images` uploads are kept in memory by sha256, so the form can be sent again with
another class or method without uploading again.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive

from explainers.engine import BagExplainer
from explainers.errors import ImageError, ImageTooLarge, ModelError
from explainers.feature_views import filter_grid
from explainers.methods.registry import method, method_names
from explainers.models.io import load_model, model_sha256
from explainers.models.mil import MILModel
from explainers.single_image import TOP5, RegionConfig, RegionExplanation, explain_region, read_image
from pipeline.errors import FormProblem, UploadTooLarge
from pipeline.viewer import viewer_routes
from reports.image_page import ALL, PageForm, PageInfo, mpp_notes, render_image_page
from tiling.archive import positive
from tiling.resolution import PLAUSIBLE_MPP, plausible

log = logging.getLogger(__name__)

SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
FIELDS = ("target", "method", "mpp", "image_id")


@dataclass(frozen=True)
class ServeConfig:
    """host/port to listen on (loopback by default); reports: an audit output folder to serve;
    max_upload_mb: upload size limit; max_pixels: image size limit (width x height, read from
    the header); max_requests: explanations running or waiting at once; kept_images: uploads
    kept in memory for resubmits; max_tiles: model tiles per image; device: auto|cpu|cuda."""

    host: str = "127.0.0.1"
    port: int = 8000
    reports: Path | None = None
    max_upload_mb: float = 20.0
    max_pixels: int = 4096 * 4096
    max_requests: int = 4
    kept_images: int = 8
    max_tiles: int = 64
    device: str = "cpu"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class Busy(Exception):
    """More explanations are running or waiting than `max_requests` (HTTP 503)."""


class CrossSite(Exception):
    """A form POST from another site's page (HTTP 403)."""


def status_of(exc: Exception) -> int:
    """413 too large, 400 a bad form, 403 another site, 503 busy, 415 not an image or an unsupported mode."""
    if isinstance(exc, (UploadTooLarge, ImageTooLarge)):
        return 413
    return {FormProblem: 400, CrossSite: 403, Busy: 503}.get(type(exc), 415)


def limited(receive: Receive, limit: int) -> Receive:
    """An ASGI `receive` that raises UploadTooLarge once more than `limit` body bytes arrived."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise UploadTooLarge
        return message

    return wrapped


def check_origin(request: Request) -> None:
    """CrossSite unless the request comes from this server's own page: Sec-Fetch-Site, when sent,
    is not cross-site or same-site (another port of this host), and the Origin header, when sent,
    names this host (scheme://host:port) - or is "null" (our pages send no referrer) on a request
    the browser marks same-origin. Clients that send neither (curl, scripts) are not browsers
    a page could drive, so they pass."""
    origin, site = request.headers.get("origin"), request.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site") or (
            origin is not None and urlsplit(origin).netloc != request.headers.get("host")
            and not (origin == "null" and site == "same-origin")):
        raise CrossSite(f"a form sent from {origin or 'another site'} is refused; use the form on this server's "
                        "own page")


class KeptImages:
    """The last `size` uploaded files in memory, keyed by their sha256 (least recently used dropped)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._items[key] = (name, data)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> tuple[str, bytes]:
        with self._lock:
            if key not in self._items:
                raise FormProblem("the image sent earlier is no longer kept; choose the file again")
            self._items.move_to_end(key)
            return self._items[key]


class ImageService:
    """The loaded model: explains one upload at a time (decoding included) and renders the page."""

    def __init__(self, model_dir: Path, config: ServeConfig) -> None:
        self.model, self.model_config = load_model(model_dir)
        self.filters = filter_grid(self.model)
        self.config = config
        self.methods = offered_methods(self.model, self.model_config.target_layer)
        self.info = PageInfo(model_name=self.model_config.name, model_sha256=model_sha256(model_dir),
                             reports_url="/reports/" if config.reports else None)
        self.kept = KeptImages(config.kept_images)
        self.slots = threading.BoundedSemaphore(config.max_requests)   # requests running or waiting
        self._lock = threading.Lock()

    def region_config(self, fields: dict[str, str]) -> RegionConfig:
        """The checked form values as a RegionConfig; FormProblem naming a bad one."""
        if fields["method"] not in (*self.methods, ALL):
            raise FormProblem(f"unknown method {fields['method']!r}; choose one of {', '.join(self.methods)}")
        if fields["target"] and fields["target"] not in (*self.model_config.classes, TOP5):
            raise FormProblem(f"unknown class {fields['target']!r}; pick one of the list")
        methods = self.methods if fields["method"] == ALL else (fields["method"],)
        return RegionConfig(targets=(fields["target"],) if fields["target"] else (), methods=methods,
                            max_tiles=self.config.max_tiles, device=self.config.device)

    def explain(self, data: bytes, name: str, fields: dict[str, str]) -> RegionExplanation:
        """Check the form values, then read the image and explain it, one request at a time."""
        region, mpp = self.region_config(fields), _mpp(fields["mpp"])
        with self._lock:
            image, recorded = read_image(data, name, self.config.max_pixels)
            result = explain_region(image, mpp if mpp is not None else recorded, self.model, self.model_config, region)
        if result.mpp_assumed:
            log.warning("%s: no resolution recorded or given; assumed the model's %g µm/px", name, result.mpp)
        return result

    def page(self, fields: dict[str, str], status: int = 200, result: RegionExplanation | None = None,
             source: str = "", error: str | None = None) -> HTMLResponse:
        form = PageForm(classes=list(self.model_config.classes), methods=list(self.methods),
                        max_upload_mb=self.config.max_upload_mb, model_mpp=self.model_config.mpp, **fields)
        info = replace(self.info, source=source, notes=mpp_notes(result) if result is not None else [])
        html = render_image_page(result, info, form=form, error=error, filters=self.filters)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def offered_methods(model: MILModel, target_layer: str) -> tuple[str, ...]:
    """The registered methods cheap enough for a request (`Method.interactive`) that this model can give."""
    offered = []
    for name in (n for n in method_names() if method(n).interactive):
        try:
            BagExplainer(model, target_layer, (name,))
        except ModelError:
            continue
        offered.append(name)
    return tuple(offered)


def _mpp(text: str) -> float | None:
    if not text.strip():
        return None
    value = positive(text)
    if value is None or not plausible(value):
        raise FormProblem(f"resolution {text!r} is not a number of µm/px within {PLAUSIBLE_MPP[0]:g}-"
                          f"{PLAUSIBLE_MPP[1]:g}; leave it blank or fix it")
    return value


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart form of at most `limit` bytes, every part held in memory (never spooled)."""
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise UploadTooLarge
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise FormProblem("the form could not be read (not multipart/form-data); upload one image with the page's form")
    parser = MultiPartParser(request.headers, Request(request.scope, limited(request.receive, limit)).stream(),
                             max_files=1, max_fields=len(FIELDS))
    parser.spool_max_size = limit + 1
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise FormProblem(f"the form could not be read ({exc.message}); upload one image with the page's form") from exc


async def _upload(form: FormData, kept: KeptImages) -> tuple[str, bytes, dict[str, str]]:
    """(file name, bytes, fields) of the form: the new upload, else the kept image it names."""
    fields = {k: str(form.get(k) or "") for k in FIELDS}
    upload = form.get("image")
    data = await upload.read() if isinstance(upload, UploadFile) else b""
    if isinstance(upload, UploadFile) and upload.filename:
        if not data:
            raise FormProblem(f"{upload.filename}: the uploaded file is empty; choose a PNG, JPEG or TIFF file")
        name = upload.filename
        fields["image_id"] = kept.put(name, data)
    elif fields["image_id"]:
        name, data = kept.get(fields["image_id"])
    else:
        raise FormProblem("no image was uploaded; choose a PNG, JPEG or TIFF file")
    return name, data, fields


def upload_routes(service: ImageService) -> list[BaseRoute]:
    """GET / (the form) and POST /explain of `service`."""
    config = service.config
    too_large = (f"The upload is larger than the limit of {config.max_upload_mb:g} MB; crop the region of "
                 "interest, or start `slideaudit serve` with a larger --max-upload-mb.")
    busy = "The server is busy explaining other images; try again in a moment."
    defaults = {"target": "", "method": service.methods[0], "mpp": "", "image_id": ""}

    async def home(request: Request) -> Response:
        return service.page(defaults)

    async def explain(request: Request) -> Response:
        fields = dict(defaults)
        if not service.slots.acquire(blocking=False):
            return service.page(fields, status_of(Busy()), error=busy)
        try:
            check_origin(request)
            form = await _read_form(request, config.max_upload_bytes)
            try:
                name, data, fields = await _upload(form, service.kept)
            finally:
                await form.close()
            fields["method"] = fields["method"] or defaults["method"]
            result = await run_in_threadpool(service.explain, data, name, fields)
        except (UploadTooLarge, FormProblem, ImageError, CrossSite) as exc:
            return service.page(fields, status_of(exc), error=str(exc) or too_large)
        finally:
            service.slots.release()
        return service.page(fields, result=result, source=name)

    return [Route("/", home), Route("/explain", explain, methods=["POST"])]


def create_app(model_dir: Path | None, config: ServeConfig = ServeConfig()) -> Starlette:
    """The web app: the upload page for the model in `model_dir` (loaded now) when given, the
    reports and their viewer when `config.reports` is set (at least one of the two)."""
    if model_dir is None and config.reports is None:
        raise ValueError("serve needs a model, a reports folder or both")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def to_reports(request: Request) -> Response:
        return RedirectResponse("/reports/")

    service = ImageService(model_dir, config) if model_dir is not None else None
    routes: list[BaseRoute] = [Route("/healthz", health)]
    routes += upload_routes(service) if service is not None else [Route("/", to_reports)]
    if config.reports is not None:
        routes += viewer_routes(config.reports)
        routes.append(Mount("/reports", StaticFiles(directory=Path(config.reports), html=True), name="reports"))
    app = Starlette(routes=routes)
    app.state.service = service
    return app


def serve(model_dir: Path | None, config: ServeConfig = ServeConfig()) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model_dir, config)
    log.info("serving %s on http://%s:%d/", model_dir or config.reports, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
