"""``glueloc serve``: a warm localisation service over HTTP, and the page to look at its answers.

Paying process start, model loading and index opening for every ``glueloc query`` is the
wrong shape for placing photos one at a time, so the service keeps one Localizer open
and answers every request with it — the same code path, so the same answer as the CLI.

* **One snapshot per answer.** A Localizer answers from the snapshot it opened
  (query.snapshot). The service checks every ``reload_seconds`` whether the database's
  committed state moved (another FAISS file, codebook or calibration: a finished index
  run, a retrain, a calibration, a removal; not while a writer holds the lock) and then
  opens a new Localizer *beside* the old one, which keeps answering; the swap happens
  between two requests. It never writes.
* **Untrusted requests.** The body is read up to ``max_bytes`` (413 past it), the upload
  is decoded by the same safe decoder as indexing (pixel bombs refused), each request
  has a time limit (504), at most ``max_waiting`` wait their turn (503 past it), and
  every refusal is a 4xx/5xx with one JSON ``detail`` line — never a traceback.
* **Loopback by default.** Binding any other address needs a token, sent as the
  ``X-Glueloc-Token`` header (or ``?token=`` for the page's pictures); on loopback the
  token is optional.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import hmac
import io
import logging
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image as PILImage
from sqlalchemy import func, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from glueloc.core.errors import BadImageError, GluelocError
from glueloc.pictures import match_picture
from glueloc.query.localizer import Localizer, QueryOptions
from glueloc.storage import inspect as inspect_db
from glueloc.storage.database import Database
from glueloc.storage.layout import Layout
from glueloc.storage.models import Image
from glueloc.storage.lock import is_locked
from glueloc.vision.images import load_image
from glueloc.viz import draw_map

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Glueloc-Token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    query: QueryOptions = QueryOptions()
    token: str | None = None  # required in TOKEN_HEADER (or ?token=) when set
    max_bytes: int = 20 * 1024 * 1024  # largest request body accepted
    timeout_seconds: float = 30.0  # one request's time limit
    max_waiting: int = 8  # requests queued behind the one being answered; more are refused
    reload_seconds: float = 5.0  # how often the committed state is checked for a new snapshot


class ServiceError(Exception):
    """A request refused with one message and an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


#: FAISS files, codebook, calibration, and the images (how many, the newest id): batches
#: commit images without rewriting the FAISS files (storage.pending), so the files alone
#: would not show that the catalogue moved.
SnapshotKey = tuple[str | None, str | None, int | None, int | None, int, int]


def committed_state(db: Database, retrieval: str) -> SnapshotKey:
    """What a snapshot for ``retrieval`` would be made of now: the two FAISS files (global
    vector, retrieval model), the codebook and the calibration it would use (query.snapshot
    reads the same)."""
    with db.session() as session:
        state = db.state(session)
        if state is None:
            return None, None, None, None, 0, 0
        calibration = None if state.codebook_id is None else db.calibration(session, state.codebook_id, retrieval,
                                                                             state.model_id)
        count, newest = session.execute(select(func.count(Image.id), func.max(Image.id))).one()
        return (state.faiss_file, state.model_faiss_file, state.codebook_id,
                None if calibration is None else calibration.id, int(count or 0), int(newest or 0))


def snapshot_of(localizer: Localizer) -> SnapshotKey:
    """The same for the snapshot a Localizer answers from."""
    calibration = localizer.calibration
    return (localizer.state.faiss_file, localizer.state.model_faiss_file, localizer.state.codebook_id,
            None if calibration is None else calibration.id, len(localizer.images), max(localizer.images, default=0))


def release_freed_memory() -> None:
    """Give the memory of a closed snapshot back to the system.

    A snapshot holds hundreds of MB (Getty's vote index is ~600 MB); once the old one is
    closed its memory is free, but glibc keeps freed heap pages, so without this every
    reload would leave the service's RSS a snapshot larger. ``malloc_trim`` is glibc's;
    elsewhere this does nothing.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        logger.debug("malloc_trim is not available here; freed memory stays with the process")


class WarmLocalizer:
    """One open Localizer, swapped for a fresh one when the committed state moves.

    Requests take ``lock`` while they use the Localizer (the CPU has room for one query
    at a time anyway); a reload builds the new Localizer without it, then swaps under it,
    so no request ever sees two snapshots.
    """

    def __init__(self, layout: Layout, options: ServeOptions) -> None:
        self.layout, self.options = layout, options
        self.lock = threading.Lock()
        self.localizer = Localizer(layout, options.query)
        self.waiting = 0
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="glueloc-reload", daemon=True)
        self._refresher.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.options.reload_seconds):
            try:
                self.refresh()
            except Exception:  # a reload that fails leaves the current snapshot answering
                logger.exception("could not open the database's new state; still answering from the previous one")

    def refresh(self) -> bool:
        """Open a new snapshot if the committed state moved; True when it swapped.

        Not while a writer holds the database's lock: an index run commits a batch every
        few seconds, and reopening after each would cost a second set of indexes and a
        core for as long as it runs. Its committed batches are picked up once it ends.
        """
        if is_locked(self.layout):
            return False
        # Only this thread swaps, so the Localizer read here stays open while its database is read.
        if committed_state(self.localizer.db, self.options.query.retrieval) == snapshot_of(self.localizer):
            return False
        fresh = Localizer(self.layout, self.options.query)
        with self.lock:
            old, self.localizer = self.localizer, fresh
        del old
        release_freed_memory()
        logger.info("now answering from %d images (FAISS %s)", len(fresh.images), fresh.state.faiss_file)
        return True

    def run(self, work: Callable[[Localizer], Any]) -> Any:
        with self.lock:
            return work(self.localizer)

    def close(self) -> None:
        self._stop.set()
        self._refresher.join(timeout=self.options.reload_seconds + 1)
        with self.lock:
            self.localizer.close()


def _safe_name(filename: str | None) -> str:
    """The upload's base name reduced to safe characters: it only names the answer."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "").name)[:100].lstrip(".")
    return base or "upload"


async def _read_upload(request: Request, options: ServeOptions) -> tuple[str, bytes, dict[str, str]]:
    """The multipart field ``image`` (name, bytes) and the other form fields, within the size limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > options.max_bytes:
        raise ServiceError(413, f"request body of {int(declared)} bytes is over the limit of {options.max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > options.max_bytes:
            raise ServiceError(413, f"request body is over the limit of {options.max_bytes} bytes")
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ServiceError(415, "send the photo as multipart/form-data in the field 'image'")

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    form = await Request(request.scope, replay).form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ServiceError(422, "no file in the multipart field 'image'")
    data = await upload.read()
    if not data:
        raise ServiceError(400, "the uploaded image is empty")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return _safe_name(upload.filename), data, fields


def _png(image: np.ndarray) -> Response:
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    if not ok:
        raise ServiceError(500, "could not encode the picture")
    return Response(encoded.tobytes(), media_type="image/png")


def create_app(layout: Layout, options: ServeOptions) -> FastAPI:
    """The service for the database at ``layout``; opens it now (errors are the CLI's to report)."""
    warm = WarmLocalizer(layout, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        warm.close()  # the service stops: release the snapshot and the reload thread

    app = FastAPI(title="glueloc", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.warm = warm

    def refuse(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return refuse(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
        return refuse(422, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return refuse(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
        return refuse(500, "internal error: the service log has the details")

    @app.middleware("http")
    async def _token(request: Request, call_next: Callable) -> Response:
        if options.token and request.url.path not in ("/", "/health"):
            given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
            if not hmac.compare_digest(given.encode(), options.token.encode()):
                return refuse(401, f"missing or wrong token: send it in the {TOKEN_HEADER} header")
        return await call_next(request)

    async def answer(work: Callable[[Localizer], Any]) -> Any:
        """Run ``work`` on the warm Localizer in a worker thread, queued and time-limited."""
        if warm.waiting > options.max_waiting:
            raise ServiceError(503, f"busy: {warm.waiting} requests are waiting; try again shortly")
        warm.waiting += 1
        try:
            return await asyncio.wait_for(run_in_threadpool(warm.run, work), options.timeout_seconds)
        except asyncio.TimeoutError:
            raise ServiceError(504, f"no answer within {options.timeout_seconds:g} s") from None
        except BadImageError as exc:
            raise ServiceError(400, str(exc)) from None
        except GluelocError as exc:
            raise ServiceError(503, str(exc)) from None
        finally:
            warm.waiting -= 1

    def with_upload(name: str, data: bytes, work: Callable[[Localizer, Path], Any]) -> Callable[[Localizer], Any]:
        def run(localizer: Localizer) -> Any:
            with tempfile.TemporaryDirectory(prefix="glueloc-serve-") as folder:
                path = Path(folder) / name
                path.write_bytes(data)
                return work(localizer, path)
        return run

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("glueloc").joinpath("web/index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        localizer = warm.localizer
        return {"status": "ok", "images": len(localizer.images), "faiss_file": localizer.state.faiss_file,
                "calibration": None if localizer.calibration is None else localizer.calibration.id,
                "ranked_by": localizer.ranked_by}

    @app.get("/db")
    async def database() -> dict[str, Any]:
        def summary(localizer: Localizer) -> dict[str, Any]:
            return inspect_db.summary(localizer.db)
        return await answer(summary)

    @app.get("/points")
    async def points() -> dict[str, Any]:
        localizer = warm.localizer
        return {"points": [[i.x, i.y] for i in localizer.images.values()]}

    @app.post("/locate")
    async def locate(request: Request) -> dict[str, Any]:
        name, data, _ = await _read_upload(request, options)
        location = await answer(with_upload(name, data, lambda localizer, path: localizer.locate(path)))
        result = asdict(location)
        result["neighbours"] = [dict(n, thumb=f"/thumb/{n['image_id']}") for n in result["neighbours"]]
        return result

    @app.post("/match.png")
    async def match(request: Request) -> Response:
        name, data, fields = await _read_upload(request, options)
        wanted = fields.get("neighbour", "")

        def draw(localizer: Localizer, path: Path) -> np.ndarray:
            chosen = next((i for i in localizer.images.values() if i.name == wanted), None)
            if chosen is None:
                raise ServiceError(404, f"no database image named {wanted!r} (form field 'neighbour')")
            return match_picture(localizer, path, chosen.id)
        return _png(await answer(with_upload(name, data, draw)))

    @app.get("/map.png")
    def map_png(x: float | None = None, y: float | None = None) -> Response:  # drawn in a worker thread
        localizer = warm.localizer
        db_xy = np.array([(i.x, i.y) for i in localizer.images.values()])
        estimate = (x, y) if x is not None and y is not None else None
        return _png(draw_map(db_xy, [], estimate))

    @app.get("/thumb/{image_id}")
    def thumb(image_id: int) -> Response:  # decoded in a worker thread
        image = warm.localizer.images.get(image_id)
        if image is None:
            raise ServiceError(404, f"no database image with id {image_id}")
        if image.path is None or not image.path.is_file():
            raise ServiceError(404, f"{image.name}: the file is no longer where it was indexed")
        decoded = load_image(image.path, options.query.max_pixels)
        picture = PILImage.fromarray(decoded.rgb)
        picture.thumbnail((160, 160))
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=80)
        return Response(out.getvalue(), media_type="image/jpeg")

    return app


def serve(layout: Layout, host: str, port: int, options: ServeOptions) -> None:
    """Run the service until interrupted (``glueloc serve``)."""
    import uvicorn

    if not is_loopback(host) and not options.token:
        raise GluelocError(f"serving on {host} (not loopback) needs a token: --token or $GLUELOC_SERVE_TOKEN")
    app = create_app(layout, options)
    logger.info("serving %s on http://%s:%d", layout.root, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
