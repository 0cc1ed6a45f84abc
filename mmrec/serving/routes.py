"""The HTTP API's routes: one :class:`~fastapi.APIRouter` per resource (operations, users,
items, new visitors), their request and response models, and the dependency that hands each
handler the app's one :class:`~mmrec.serving.recommender.Recommender`.

The routes check no bound of their own: every request goes to the recommender, which validates
it against the one :class:`~mmrec.serving.limits.Limits` (its :class:`RecommendError` becomes a
422 naming the field, in :mod:`mmrec.serving.app`). The field descriptions say the bounds so
that ``/docs`` shows them; ``GET /info`` lists the values in force. Handlers are ``async`` and
run on the event loop: a request is ~1 ms of CPU-bound work under the GIL, which a thread-pool
hop would only add to.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from mmrec.serving.recommender import Recommendation, Recommender
from mmrec.serving.rerank import reranker_name

#: how the field descriptions refer to the limits (their values: ``GET /info``)
_K = "list length, 1 .. limits.max_k"
_IDS = "at most limits.max_items"


async def recommender(request: Request) -> Recommender:
    """The app's recommender, loaded once in its lifespan (503 until then)."""
    rec = getattr(request.app.state, "recommender", None)
    if rec is None:
        raise HTTPException(503, "the bundle is still loading")
    return rec


Rec = Annotated[Recommender, Depends(recommender)]


class RecommendationOut(BaseModel):
    rank: int = Field(description="1-based position in the list")
    item: str = Field(description="the item's raw id")
    title: str
    score: float = Field(description="the model's score (or content similarity when source is 'content')")
    because: str | None = Field(None, description="raw id of the history / liked item most like this one")
    because_title: str | None = None
    source: str = Field(description="'model': ranked by the model; 'ranker': by the bundle's learned ranker; "
                                    "'content': by content similarity alone")
    image: str | None = Field(None, description="URL of the item's image, or null")
    proposed_by: list[str] | None = Field(None, description="with a learned ranker: the candidate sources that "
                                                            "proposed the item (model, content, cooccurrence, popular)")


class RecommendationsOut(BaseModel):
    user: str | None = Field(None, description="the known user, or null for a new visitor")
    k: int
    diversity: float
    items: list[RecommendationOut]
    matched: list[str] = Field(default_factory=list, description="items nearest to the text query, if any")
    notice: str | None = Field(None, description="what the visitor should know, e.g. no word of the query is known")


class ItemOut(BaseModel):
    item: str
    title: str
    text: str = ""
    image: str | None = None
    rankable: bool = Field(description="whether the model can score it (false: a cold item of an ID-only model)")
    popularity: int = Field(description="training users of the item")


class VisitorRequest(BaseModel):
    """A new visitor: liked items and/or a text query."""

    items: list[str] = Field(default_factory=list, description=f"raw ids of items the visitor liked ({_IDS})")
    query: str | None = Field(None, description="what the visitor is looking for, in words "
                                                "(at most limits.max_query_chars characters)")
    k: int = Field(10, description=_K)
    diversity: float = Field(0.0, description="0: the ranking as is .. 1: most diverse")
    exclude: list[str] = Field(default_factory=list, description=f"raw item ids never to show ({_IDS})")


def _image_url(item: str, image: str | None) -> str | None:
    return f"/items/{item}/image" if image else None


def _out(rec: Recommendation) -> dict[str, Any]:
    d = rec.as_dict()
    d["image"] = _image_url(rec.item, rec.image)
    return d


def _item(rec: Recommender, item: str) -> dict[str, Any]:
    row = rec.describe(item)
    return {"item": str(row["raw_id"]), "title": str(row.get("title") or ""), "text": str(row.get("text") or "")[:500],
            "image": _image_url(str(row["raw_id"]), row.get("image")), "rankable": row["rankable"],
            "popularity": row["popularity"]}


def _split(values: list[str] | None) -> list[str]:
    """``exclude=a,b&exclude=c`` -> ``[a, b, c]``."""
    return [v for value in values or [] for v in value.split(",") if v]


# -- operations ----------------------------------------------------------------------
operations = APIRouter(tags=["operations"])


@operations.get("/health")
async def health(request: Request):
    """``ok`` once the bundle is loaded (503 before), and which worker process answered."""
    rec = getattr(request.app.state, "recommender", None)
    if rec is None:
        return JSONResponse({"error": "loading"}, status_code=503)
    return {"status": "ok", "users": rec.num_users, "items": rec.num_items, "worker": os.getpid()}


@operations.get("/info")
async def info(rec: Rec):
    """The model card, the serving setup and the request limits in force."""
    card, manifest = rec.bundle.card, rec.bundle.manifest
    return {"model": card.get("model"), "dataset": card.get("dataset"), "metrics": card.get("metrics", {}),
            "selected_on": card.get("selected_on"), "best_epoch": card.get("best_epoch"),
            "epochs_trained": card.get("epochs_trained"),
            # a run stopped by Ctrl-C / SIGTERM: its best checkpoint so far (None: it finished)
            "interrupted": card.get("interrupted"), "created": manifest.get("created"),
            "mmrec_version": card.get("mmrec_version"), "users": rec.num_users, "items": rec.num_items,
            "index": rec.index.name,
            # an approximate index: its search breadth and the recall@k of the exact top measured at export
            "index_search": ({"factory": rec.index.factory, "knob": rec.index.knob, "value": getattr(rec.index, "breadth", None),
                              "recall": rec.index.recall,
                              "recall_k": (rec.bundle.manifest.get("index") or {}).get("k")}
                             if rec.index.name == "faiss" else None),
            "rerank": reranker_name(rec.rerank),
            # the learned ranking stage: its sources and the held-out validation users' figures at export
            "ranker": ({k: v for k, v in manifest["ranker"].items() if k in ("kind", "sizes", "params", "rounds", "held_out")}
                       if rec.two_stage is not None else None),
            "text_queries": rec.visitors.text_queries, "limits": rec.limits.model_dump()}


# -- known users ---------------------------------------------------------------------
users = APIRouter(prefix="/users", tags=["users"])


@users.get("/random")
async def random_user(rec: Rec):
    """A random known user with a history (for the page's "a random user")."""
    return {"user": rec.catalogue.random_user()}


@users.get("/{user}/history", response_model=list[ItemOut])
async def history(user: str, rec: Rec, limit: int = Query(50, ge=1, le=1000, description="most items shown")):
    """The user's known items (train + valid), latest first."""
    return [_item(rec, i) for i in rec.history(user)[::-1][:limit]]


@users.get("/{user}/recommendations", response_model=RecommendationsOut)
async def for_user(user: str, rec: Rec, k: int = Query(10, description=_K),
                   diversity: float = Query(0.0, description="0 .. 1"),
                   exclude: list[str] | None = Query(None, description=f"raw item ids never to show (comma "
                                                                       f"separated; {_IDS})"),
                   exclude_seen: bool = Query(True, description="leave out the user's history")):
    """A known user's list (their history left out, as evaluation does)."""
    recs = rec.recommend([user], k=k, exclude_seen=exclude_seen, exclude=_split(exclude), diversity=diversity)[0]
    return {"user": user, "k": k, "diversity": diversity, "items": [_out(r) for r in recs]}


# -- new visitors --------------------------------------------------------------------
visitors = APIRouter(tags=["visitors"])


@visitors.post("/recommendations", response_model=RecommendationsOut)
async def for_visitor(body: VisitorRequest, rec: Rec):
    """A new visitor's list from liked items and/or words, with the items the words matched."""
    answer = rec.answer_visitor(body.items, body.query, k=body.k, exclude=body.exclude, diversity=body.diversity)
    return {"user": None, "k": body.k, "diversity": body.diversity, "items": [_out(r) for r in answer.items],
            "matched": answer.matched, "notice": answer.notice}


# -- items ---------------------------------------------------------------------------
items = APIRouter(prefix="/items", tags=["items"])


@items.get("", response_model=list[ItemOut])
async def search(rec: Rec, search: str = Query("", description="words of the title (at most limits.max_query_chars)"),
                 limit: int = Query(20, description="most results, 1 .. limits.search_limit")):
    """Items whose title contains the words, most popular first."""
    return [_item(rec, rec.item_raw[i]) for i in rec.search(search, limit)]


@items.get("/{item}", response_model=ItemOut)
async def item(item: str, rec: Rec):
    return _item(rec, item)


@items.get("/{item}/image")
async def image(item: str, rec: Rec):
    row = rec.describe(item)  # 404 for an unknown item
    if not row.get("image"):
        raise HTTPException(404, f"item {item!r} has no image")
    return FileResponse(rec.bundle.root / row["image"], headers={"Cache-Control": "public, max-age=86400"})


@items.get("/{item}/similar", response_model=RecommendationsOut)
async def similar(item: str, rec: Rec, k: int = Query(10, description=_K)):
    """The items most like this one (content similarity where the bundle has content)."""
    return {"user": None, "k": k, "diversity": 0.0, "items": [_out(r) for r in rec.similar_items(item, k)]}


router = APIRouter()
"""Every route of the API (what :func:`~mmrec.serving.app.create_app` includes)."""
for _resource in (operations, users, visitors, items):
    router.include_router(_resource)
