"""The HTTP service: a FastAPI app over one :class:`~mmrec.serving.recommender.Recommender`.

The bundle is loaded once per worker process in the app's lifespan (memory-mapped, so extra
workers share the vectors' pages); ``/health`` answers 503 until it is loaded. Handlers run on
the event loop: a request is ~1 ms of CPU-bound work under the GIL, which a thread-pool hop
would only add to (measured: 3.6 -> ms per request in process); slow clients cost the loop
nothing while they send or read. The recommender only reads, so concurrent requests are safe. Bad input never reaches a 500: unknown ids get 404 (in the path)
or 422 (in a body or query) listing them, out-of-range parameters a 422 naming the field,
malformed JSON a 422, an oversized body a 413, every error as JSON ``{"error": ..., ...}``.

The page at ``/`` (``static/``: plain HTML, CSS and a small script; no build step, no CDN)
shows a known user's history and recommendations, lets a new visitor search, like items or
type a query, and has a diversity slider.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from mmrec.serving.recommender import Recommendation, RecommendError, Recommender, UnknownIdError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class Limits(BaseModel):
    """Request limits of the service (``conf/serve.yaml``: ``limits``)."""

    max_k: int = 100
    max_query_chars: int = 500
    max_items: int = 100
    max_body_bytes: int = 65536
    search_limit: int = 50


class RecommendationOut(BaseModel):
    rank: int = Field(description="1-based position in the list")
    item: str = Field(description="the item's raw id")
    title: str
    score: float = Field(description="the model's score (or content similarity when source is 'content')")
    because: str | None = Field(None, description="raw id of the history / liked item most like this one")
    because_title: str | None = None
    source: str = Field(description="'model': ranked by the model; 'content': by content similarity alone")
    image: str | None = Field(None, description="URL of the item's image, or null")


class RecommendationsOut(BaseModel):
    user: str | None = Field(None, description="the known user, or null for a new visitor")
    k: int
    diversity: float
    items: list[RecommendationOut]
    matched: list[str] = Field(default_factory=list, description="items nearest to the text query, if any")


class ItemOut(BaseModel):
    item: str
    title: str
    text: str = ""
    image: str | None = None
    rankable: bool = Field(description="whether the model can score it (false: a cold item of an ID-only model)")
    popularity: int = Field(description="training users of the item")


class VisitorRequest(BaseModel):
    """A new visitor: liked items and/or a text query."""

    items: list[str] = Field(default_factory=list, description="raw ids of items the visitor liked")
    query: str | None = Field(None, description="what the visitor is looking for, in words")
    k: int = Field(10, ge=1, description="list length")
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0: the ranking as is .. 1: most diverse")
    exclude: list[str] = Field(default_factory=list, description="raw item ids never to show")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, whether it announces its
    length (refused before reading) or not (counted while the handler reads it)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = _error(413, f"request body over {self.max_bytes} bytes")
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _image_url(item: str, image: str | None) -> str | None:
    return f"/items/{item}/image" if image else None


def _out(rec: Recommendation) -> dict[str, Any]:
    d = rec.as_dict()
    d["image"] = _image_url(rec.item, rec.image)
    return d


async def _recommender(request: Request) -> Recommender:
    rec = getattr(request.app.state, "recommender", None)
    if rec is None:
        raise HTTPException(503, "the bundle is still loading")
    return rec


async def _limits(request: Request) -> Limits:
    return request.app.state.limits


def _split(values: list[str] | None) -> list[str]:
    """``exclude=a,b&exclude=c`` -> ``[a, b, c]``."""
    return [v for value in values or [] for v in value.split(",") if v]


def create_app(load: Callable[[], Recommender], limits: Limits | None = None, title: str = "mmrec") -> FastAPI:
    """The service; ``load()`` builds the recommender (called once, in the lifespan)."""
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.recommender = load()
        rec = app.state.recommender
        log.info("bundle %s loaded: %d users, %d items", rec.bundle.root, rec.num_users, rec.num_items)
        yield
        app.state.recommender = None

    app = FastAPI(title=f"{title} recommendations", lifespan=lifespan,
                  description="Recommendations from an mmrec bundle: known users, new visitors, similar items.")
    app.state.limits = limits
    app.state.recommender = None

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(UnknownIdError)
    async def unknown_ids(request: Request, err: UnknownIdError):
        # the resource named by the path does not exist: 404; ids inside a body or query: 422
        in_path = bool(set(err.ids) & {str(v) for v in request.path_params.values()})
        return _error(404 if in_path else 422, str(err), unknown_ids=err.ids, kind=err.kind)

    @app.exception_handler(RecommendError)
    async def bad_request(request: Request, err: RecommendError):
        return _error(422, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            if e.get("type") == "json_invalid":
                at = e.get("loc", ("body", "?"))[-1]
                problems.append(f"the body is not valid JSON (at character {at}: "
                                f"{e.get('ctx', {}).get('error', 'decode error')})")
                continue
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "invalid request", detail=[{"loc": list(e.get("loc", ())),
                                                                              "msg": e.get("msg")} for e in err.errors()])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return _error(err.status_code, str(err.detail))

    router = APIRouter()

    @router.get("/health")
    async def health(request: Request):
        rec = request.app.state.recommender
        if rec is None:
            return _error(503, "loading")
        return {"status": "ok", "users": rec.num_users, "items": rec.num_items, "worker": os.getpid()}

    @router.get("/info")
    async def info(rec: Recommender = Depends(_recommender)):
        card = rec.bundle.card
        manifest = rec.bundle.manifest
        return {"model": card.get("model"), "dataset": card.get("dataset"), "metrics": card.get("metrics", {}),
                "selected_on": card.get("selected_on"), "best_epoch": card.get("best_epoch"),
                # a run stopped by Ctrl-C / SIGTERM: its best checkpoint so far (None: it finished)
                "interrupted": card.get("interrupted"), "created": manifest.get("created"), "mmrec_version": card.get("mmrec_version"),
                "users": rec.num_users, "items": rec.num_items, "index": rec.index.name,
                "rerank": getattr(rec.rerank, "func", rec.rerank).__name__, "text_queries": rec.text_vectors is not None
                and bool(manifest.get("text_encoder")), "limits": limits.model_dump()}

    @router.get("/users/random")
    async def random_user(rec: Recommender = Depends(_recommender)):
        """A random known user with a history (for the page's "a random user")."""
        counts = rec.history_indptr[1:] - rec.history_indptr[:-1]
        candidates = [i for i in range(rec.num_users) if counts[i] > 0] or list(range(rec.num_users))
        return {"user": rec.user_raw[random.choice(candidates)]}

    @router.get("/users/{user}/history", response_model=list[ItemOut])
    async def history(user: str, limit: int = Query(50, ge=1, le=1000), rec: Recommender = Depends(_recommender)):
        """The user's known items (train + valid), latest first."""
        items = rec.history(user)[::-1][:limit]
        return [_item(rec, i) for i in items]

    @router.get("/users/{user}/recommendations", response_model=RecommendationsOut)
    async def for_user(user: str, k: int = Query(10, ge=1, le=limits.max_k, description="list length"),
                 diversity: float = Query(0.0, ge=0.0, le=1.0, description="0 .. 1"),
                 exclude: list[str] | None = Query(None, description="raw item ids never to show (comma separated)"),
                 exclude_seen: bool = Query(True, description="leave out the user's history"),
                 rec: Recommender = Depends(_recommender)):
        recs = rec.recommend([user], k=k, exclude_seen=exclude_seen, exclude=_split(exclude), diversity=diversity)[0]
        return {"user": user, "k": k, "diversity": diversity, "items": [_out(r) for r in recs]}

    @router.post("/recommendations", response_model=RecommendationsOut)
    async def for_visitor(body: VisitorRequest, rec: Recommender = Depends(_recommender)):
        if body.k > limits.max_k:
            raise RecommendError(f"k: at most {limits.max_k}, got {body.k}")
        if len(body.items) > limits.max_items or len(body.exclude) > limits.max_items:
            raise RecommendError(f"items / exclude: at most {limits.max_items} ids each")
        if body.query is not None and len(body.query) > limits.max_query_chars:
            raise RecommendError(f"query: at most {limits.max_query_chars} characters, got {len(body.query)}")
        matched = []
        if body.query and body.query.strip():
            matched = [rec.item_raw[i] for i, _ in rec.items_for_text(body.query, rec.query_items)]
        recs = rec.recommend_for_visitor(body.items, body.query, k=body.k, exclude=body.exclude,
                                         diversity=body.diversity)
        return {"user": None, "k": body.k, "diversity": body.diversity, "items": [_out(r) for r in recs],
                "matched": matched}

    @router.get("/items", response_model=list[ItemOut])
    async def search(search: str = Query("", max_length=limits.max_query_chars, description="words of the title"),
               limit: int = Query(20, ge=1, le=limits.search_limit), rec: Recommender = Depends(_recommender)):
        return [_item(rec, rec.item_raw[i]) for i in rec.search(search, limit)]

    @router.get("/items/{item}", response_model=ItemOut)
    async def item(item: str, rec: Recommender = Depends(_recommender)):
        return _item(rec, item)

    @router.get("/items/{item}/image")
    async def image(item: str, rec: Recommender = Depends(_recommender)):
        row = rec.describe(item)  # 404 for an unknown item
        if not row.get("image"):
            return _error(404, f"item {item!r} has no image")
        return FileResponse(rec.bundle.root / row["image"], headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/items/{item}/similar", response_model=RecommendationsOut)
    async def similar(item: str, k: int = Query(10, ge=1, le=limits.max_k), rec: Recommender = Depends(_recommender)):
        return {"user": None, "k": k, "diversity": 0.0, "items": [_out(r) for r in rec.similar_items(item, k)]}

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _item(rec: Recommender, item: str) -> dict[str, Any]:
    row = rec.describe(item)
    return {"item": str(row["raw_id"]), "title": str(row.get("title") or ""), "text": str(row.get("text") or "")[:500],
            "image": _image_url(str(row["raw_id"]), row.get("image")), "rankable": row["rankable"],
            "popularity": row["popularity"]}
