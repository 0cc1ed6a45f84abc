"""The HTTP service: a FastAPI app over one :class:`~mmrec.serving.recommender.Recommender`.

The bundle is loaded once per worker process in the app's lifespan (memory-mapped, so extra
workers share the vectors' pages) and kept in ``app.state``, where the routes' dependency
finds it (:mod:`mmrec.serving.routes`); ``/health`` answers 503 until it is loaded. The
recommender only reads, so concurrent requests are safe. Bad input never reaches a 500: unknown
ids get 404 (in the path) or 422 (in a body or query) listing them, out-of-range parameters a
422 naming the field, malformed JSON a 422, an oversized body a 413, every error as JSON
``{"error": ..., ...}``.

The page at ``/`` (``static/``: plain HTML, CSS and a small script; no build step, no CDN)
shows a known user's history and recommendations, lets a new visitor search, like items or
type a query, and has a diversity slider.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from mmrec.serving.limits import Limits
from mmrec.serving.recommender import Recommender, RecommendError, UnknownIdError
from mmrec.serving.routes import router

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


class BodyLimit:
    """ASGI middleware: a request body over the app's ``limits.max_body_bytes`` gets a 413,
    whether it announces its length (refused before reading) or not (counted while the handler
    reads it). The limit is read from ``app.state.limits`` per request: the recommender's own
    once it is loaded."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        max_bytes = scope["app"].state.limits.max_body_bytes
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            response = _error(413, f"request body over {max_bytes} bytes")
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, f"request body over {max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"error": message, ...}`` with the status that says whose fault it is."""

    @app.exception_handler(UnknownIdError)
    async def unknown_ids(request: Request, err: UnknownIdError):
        # the resource named by the path does not exist: 404; ids inside a body or query: 422
        in_path = bool(set(err.ids) & {str(v) for v in request.path_params.values()})
        return _error(404 if in_path else 422, str(err), unknown_ids=err.ids, kind=err.kind)

    @app.exception_handler(RecommendError)
    async def bad_request(request: Request, err: RecommendError):
        return _error(422, str(err), **({"field": err.field} if err.field else {}))

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


def create_app(load: Callable[[], Recommender], limits: Limits | None = None, title: str = "mmrec") -> FastAPI:
    """The service; ``load()`` builds the recommender (called once, in the lifespan).

    The request limits are the recommender's (it validates every request against them);
    ``limits``, where given, bounds request bodies while the bundle loads and must equal the
    recommender's (both are built from the config's one ``recommender.limits`` node): a service
    whose app and recommender disagree on them refuses to start.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rec = load()
        if limits is not None and rec.limits != limits:
            raise ValueError(f"the app's limits {limits!r} differ from the recommender's {rec.limits!r}: build "
                             f"both from one Limits (the config's recommender.limits)")
        app.state.recommender, app.state.limits = rec, rec.limits
        log.info("bundle %s loaded: %d users, %d items", rec.bundle.root, rec.num_users, rec.num_items)
        yield
        app.state.recommender = None

    app = FastAPI(title=f"{title} recommendations", lifespan=lifespan,
                  description="Recommendations from an mmrec bundle: known users, new visitors, similar items.")
    app.state.limits = limits or Limits()
    app.state.recommender = None
    app.add_middleware(BodyLimit)
    _install_error_handlers(app)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
