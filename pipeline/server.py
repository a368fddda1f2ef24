"""`slideaudit serve`: a local web page to explain uploaded images, and the audit reports.

Routes: GET / (the upload form), POST /explain (multipart: image, target, method, mpp -> the
page with the top 5 and the chosen overlay), GET /healthz, and, with `reports`, GET /reports/...
(the audit's static files, read-only; Starlette's StaticFiles refuses paths outside the folder).

Uploads are read into memory, at most `max_upload_mb` (413 beyond), and never written to disk
by this app; a file that is not a PNG/JPEG/TIFF image or has an unsupported mode gets 415, bad
form values 400. One model is loaded at start and used by one request at a time.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive

from explainers.engine import BagExplainer
from explainers.errors import ImageError, ImageTooLarge, ModelError
from explainers.feature_views import filter_grid
from explainers.methods import method, method_names
from explainers.mil import MILModel
from explainers.model_io import load_model, model_sha256
from explainers.single_image import RegionConfig, RegionExplanation, explain_region, read_image
from pipeline.errors import FormProblem, UploadTooLarge
from reports.image_page import PageForm, PageInfo, mpp_notes, render_image_page
from tiling.archive import positive

log = logging.getLogger(__name__)

SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass(frozen=True)
class ServeConfig:
    """host/port to listen on (loopback by default); reports: an audit output folder to serve;
    max_upload_mb: upload size limit; max_tiles: model tiles per image; device: auto|cpu|cuda."""

    host: str = "127.0.0.1"
    port: int = 8000
    reports: Path | None = None
    max_upload_mb: float = 20.0
    max_tiles: int = 64
    device: str = "cpu"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def status_of(exc: Exception) -> int:
    """413 too large, 400 a bad form, 415 not an image or an unsupported mode."""
    if isinstance(exc, (UploadTooLarge, ImageTooLarge)):
        return 413
    return 400 if isinstance(exc, FormProblem) else 415


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


class ImageService:
    """The loaded model: explains one upload at a time and renders the page."""

    def __init__(self, model_dir: Path, config: ServeConfig) -> None:
        self.model, self.model_config = load_model(model_dir)
        self.filters = filter_grid(self.model)
        self.config = config
        self.methods = offered_methods(self.model, self.model_config.target_layer)
        self.info = PageInfo(model_name=self.model_config.name, model_sha256=model_sha256(model_dir),
                             reports_url="/reports/" if config.reports else None)
        self._lock = threading.Lock()

    def explain(self, data: bytes, name: str, fields: dict[str, str]) -> RegionExplanation:
        """Check the form values, read the image and explain it (the model runs one request at a time)."""
        if fields["method"] not in self.methods:
            raise FormProblem(f"unknown method {fields['method']!r}; choose one of {', '.join(self.methods)}")
        if fields["target"] and fields["target"] not in self.model_config.classes:
            raise FormProblem(f"unknown class {fields['target']!r}; pick one of the list")
        mpp = _mpp(fields["mpp"])
        image, recorded = read_image(data, name)
        region = RegionConfig(targets=(fields["target"],) if fields["target"] else (), methods=(fields["method"],),
                              max_tiles=self.config.max_tiles, device=self.config.device)
        with self._lock:
            return explain_region(image, mpp if mpp is not None else recorded, self.model, self.model_config, region)

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
    if value is None:
        raise FormProblem(f"resolution {text!r} is not a positive number of µm/px; leave it blank or fix it")
    return value


async def _read_form(request: Request, limit: int) -> tuple[str, bytes, dict[str, str]]:
    """(upload file name, its bytes, the fields target/method/mpp) of a multipart form of at most
    `limit` bytes; the parsed form (and any spooled upload) is closed before returning."""
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise UploadTooLarge
    try:
        form = await Request(request.scope, limited(request.receive, limit)).form(max_files=1, max_fields=4)
    except HTTPException as exc:
        raise FormProblem(f"the form could not be read ({exc.detail}); upload one image with the page's form") from exc
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise FormProblem("no image was uploaded; choose a PNG, JPEG or TIFF file")
        data = await upload.read()
        if not data:
            raise FormProblem(f"{upload.filename}: the uploaded file is empty; choose a PNG, JPEG or TIFF file")
        fields = {k: str(form.get(k) or "") for k in ("target", "method", "mpp")}
        return upload.filename or "upload", data, fields
    finally:
        await form.close()


def create_app(model_dir: Path, config: ServeConfig = ServeConfig()) -> Starlette:
    """The web app for the model in `model_dir` (loaded now)."""
    service = ImageService(model_dir, config)
    too_large = (f"The upload is larger than the limit of {config.max_upload_mb:g} MB; crop the region of "
                 "interest, or start `slideaudit serve` with a larger --max-upload-mb.")
    defaults = {"target": "", "method": service.methods[0], "mpp": ""}

    async def home(request: Request) -> Response:
        return service.page(defaults)

    async def explain(request: Request) -> Response:
        fields = defaults
        try:
            name, data, fields = await _read_form(request, config.max_upload_bytes)
            fields["method"] = fields["method"] or defaults["method"]
            result = await run_in_threadpool(service.explain, data, name, fields)
        except (UploadTooLarge, FormProblem, ImageError) as exc:
            return service.page(fields, status_of(exc), error=str(exc) or too_large)
        return service.page(fields, result=result, source=name)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes: list[BaseRoute] = [Route("/", home), Route("/explain", explain, methods=["POST"]),
                               Route("/healthz", health)]
    if config.reports is not None:
        routes.append(Mount("/reports", StaticFiles(directory=Path(config.reports), html=True), name="reports"))
    return Starlette(routes=routes)


def serve(model_dir: Path, config: ServeConfig = ServeConfig()) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model_dir, config)
    log.info("serving model %s on http://%s:%d/", model_dir, config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
