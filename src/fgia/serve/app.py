"""The FastAPI app: POST /search, database images and thumbnails by id, health, stats and the web page."""

import functools
import io
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from fgia.data.images import ImageLoadError, load_image
from fgia.serve.batching import DecodeSlots, QueueFull, SearchBatcher, SearchOptions
from fgia.serve.config import ServeConfig
from fgia.serve.limits import BodyLimits
from fgia.serve.protocol import SearchEngine, SearchResultLike
from fgia.serve.stats import LatencyStats
from fgia.serve.uploads import ACCEPTED_TYPES, UploadError, decode_upload

STATIC_DIR = Path(__file__).parent / "static"
# The pipelines of fgia.retrieval.engine.PIPELINES (a test keeps them equal; importing the engine here would
# load torch and the models' code just to declare the API).
Pipeline = Literal["c2f", "c2f-image", "c2f-unified", "coarse", "coarse-full", "unified", "hash", "c2f-hash"]
PIPELINE_HELP = ("c2f: coarse-to-fine (the system's pipeline); c2f-image: whole-image fine features only; "
                 "c2f-unified: the unified model re-ranks; coarse, coarse-full, unified: one exact search of the "
                 "compact coarse feature, the full Conv-Net feature or the unified embedding; hash, c2f-hash: "
                 "Hamming search of the binary codes (an index built with --codes), alone or as the coarse stage")
log = logging.getLogger(__name__)


class Hit(BaseModel):
    rank: int
    id: int
    distance: float
    label: str | None = Field(description="species name when the database is labelled")
    name: str = Field(description="file name of the database image")
    image_url: str
    thumb_url: str


class SearchResponse(BaseModel):
    hits: list[Hit]
    category: str | None = Field(description="predicted meta-category")
    region_box: list[float] | None = Field(description="discriminative region x1, y1, x2, y2 in query pixels")
    confidence_map: list[list[float]] | None = Field(description="small 2-D map over the whole query image")
    query_size: tuple[int, int] = Field(description="width, height of the decoded query")
    options: dict[str, Any]
    timings_ms: dict[str, float] = Field(description="engine stages plus decode, queue and request_total")


def _require_multipart(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"POST /search takes multipart/form-data with a 'file' field, got {content_type!r}")


def _not_modified(request: Request, etag: str) -> bool:
    tags = request.headers.get("if-none-match")
    if tags is None:
        return False
    return tags.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in tags.split(",")]


def render_thumbnail(path: str, mtime_ns: int, size: int) -> bytes:
    """A JPEG of the image at `path`, longest side at most `size` (mtime_ns keys the cache on file changes)."""
    thumb = load_image(path, max_pixels=4 * size * size)  # lets JPEG draft mode skip most of a big decode
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _hits(result: SearchResultLike) -> list[Hit]:
    labels = list(result.labels) if result.labels is not None else [None] * len(result.ids)
    return [
        Hit(rank=rank, id=int(i), distance=float(d), label=label, name=Path(p).name,
            image_url=f"/images/{int(i)}", thumb_url=f"/thumbs/{int(i)}")
        for rank, (i, d, p, label) in enumerate(zip(result.ids, result.distances, result.paths, labels), start=1)
    ]


def _plain_error(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error as JSON without the objects pydantic keeps (an upload's internals, exceptions)."""
    out = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)) and len(str(value)) <= 200:
        out["input"] = value
    return out


def create_app(engine: SearchEngine, cfg: ServeConfig | None = None) -> FastAPI:
    """The search service over a loaded engine: JSON API, images by id, and the offline web page at /."""
    cfg = cfg or ServeConfig()
    batch = cfg.batching == "on"
    # Decoding happens under this bound, before the queue: N huge uploads cannot take N decoded images' memory;
    # a decoded query is reduced (`query_side`) before it waits for its batch.
    slots = DecodeSlots(cfg.max_decoding, max_waiting=cfg.max_queue)
    # A batch waits for the queries still being decoded (up to max_wait_ms), and starts at once when none is.
    batcher = SearchBatcher(engine, max_batch=cfg.max_batch if batch else 1,
                            max_wait_ms=cfg.max_wait_ms if batch else 0.0, max_queue=cfg.max_queue,
                            incoming=slots.busy)
    latency = LatencyStats(cfg.latency_window)
    thumbnail = functools.lru_cache(maxsize=cfg.thumb_cache_items)(render_thumbnail)
    cache_control = f"public, max-age={cfg.cache_max_age_s}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="fgia search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="One-shot fine-grained instance retrieval: upload a photo, get the same species.")
    app.add_middleware(BodyLimits, max_bytes=cfg.max_upload_bytes, timeout_s=cfg.upload_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_plain_error(e) for e in exc.errors()]}, status_code=422)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # FastAPI's default /docs loads Swagger UI from a CDN; serve the bundled copy so the docs work offline.
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    def database_path(id: int) -> Path:
        try:
            path = Path(engine.image_path(id))
        except (KeyError, IndexError, ValueError):
            raise HTTPException(404, f"no database image with id {id}") from None
        if not path.is_file():
            raise HTTPException(404, f"database image {id} is missing on disk")
        return path

    ImageId = Annotated[int, PathParam(ge=0, description="database image id, as returned by /search")]

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.post("/search", response_model=SearchResponse, dependencies=[Depends(_require_multipart)],
              responses={400: {"description": "corrupt or empty image"},
                         408: {"description": "the upload stalled"},
                         413: {"description": "upload bytes, pixels or decoded bytes over the limits in /stats"},
                         415: {"description": "not a JPEG/PNG/WebP upload"},
                         422: {"description": "bad options"},
                         503: {"description": "too many queries waiting"}})
    async def search(
        request: Request,
        file: Annotated[UploadFile, File(description=f"query photo ({', '.join(ACCEPTED_TYPES)})")],
        top_k: Annotated[int, Form(ge=1, le=cfg.max_top_k)] = cfg.default_top_k,
        pipeline: Annotated[Pipeline, Form(description=PIPELINE_HELP)] = "c2f",
        query_expansion: Annotated[bool, Form()] = False,
    ) -> SearchResponse:
        started = time.perf_counter()
        options = SearchOptions(top_k=top_k, pipeline=pipeline, query_expansion=query_expansion)
        try:
            async with slots.slot():
                image = await run_in_threadpool(decode_upload, await file.read(), file.content_type, cfg.max_pixels,
                                                cfg.max_decoded_bytes, cfg.query_side)
            decoded = time.perf_counter()
            result, queued_ms = await batcher.search(image, options, gone=request.is_disconnected)
        except UploadError as exc:
            raise HTTPException(exc.status_code, str(exc)) from None
        except QueueFull as exc:
            raise HTTPException(503, str(exc)) from None
        except ValueError as exc:  # the engine refusing the options (its own checks, beyond the form's)
            raise HTTPException(422, str(exc)) from None
        except Exception as exc:
            latency.record_failure()
            log.exception("search failed")
            raise HTTPException(500, f"search failed: {type(exc).__name__}: {exc}") from None
        total_ms = (time.perf_counter() - started) * 1000.0
        latency.record(total_ms)
        cmap = result.confidence_map
        return SearchResponse(
            hits=_hits(result),
            category=result.category,
            region_box=[float(v) for v in result.region_box] if result.region_box is not None else None,
            confidence_map=np.round(np.asarray(cmap, dtype=np.float64), 4).tolist() if cmap is not None else None,
            query_size=image.size,
            options={"top_k": top_k, "pipeline": pipeline, "query_expansion": query_expansion},
            timings_ms={**{k: float(v) for k, v in result.timings_ms.items()},
                        "decode": (decoded - started) * 1000.0, "queue": queued_ms, "request_total": total_ms},
        )

    @app.get("/images/{id}", responses={404: {"description": "unknown id"}, 304: {"description": "not modified"}})
    def database_image(id: ImageId, request: Request) -> Response:
        path = database_path(id)
        response = FileResponse(path, stat_result=path.stat(), headers={"cache-control": cache_control})
        if _not_modified(request, response.headers["etag"]):
            return Response(status_code=304, headers={"etag": response.headers["etag"], "cache-control": cache_control})
        return response

    @app.get("/thumbs/{id}", responses={404: {"description": "unknown id"}, 304: {"description": "not modified"}})
    def database_thumbnail(id: ImageId, request: Request) -> Response:
        path = database_path(id)
        stat = path.stat()
        headers = {"etag": f'"t{cfg.thumb_size}-{id}-{stat.st_mtime_ns:x}-{stat.st_size:x}"',
                   "cache-control": cache_control}
        if _not_modified(request, headers["etag"]):
            return Response(status_code=304, headers=headers)
        try:
            body = thumbnail(str(path), stat.st_mtime_ns, cfg.thumb_size)
        except ImageLoadError as exc:
            raise HTTPException(500, f"database image {id} cannot be read: {exc.reason}") from None
        return Response(body, media_type="image/jpeg", headers=headers)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return {**engine.stats(), "queries": latency.summary(),
                "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels,
                           "max_decoded_bytes": cfg.max_decoded_bytes, "max_top_k": cfg.max_top_k,
                           "decoding_at_once": slots.limit, "upload_timeout_s": cfg.upload_timeout_s},
                "batching": {"max_batch": batcher.max_batch, "batches": batcher.batches,
                             "batched_queries": batcher.batched_queries}}

    return app
