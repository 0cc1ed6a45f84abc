"""The plain reference service of ``bench_serve_load.py``: FastAPI + numpy, exact top-k.

    MMREC_REFERENCE_BUNDLE=<bundle> python -m uvicorn reference_serve_app:app --app-dir experiments --workers 2

``GET /users/{user}/recommendations?k=20`` scores every item of the bundle's vectors by the
dot product with the user's vector and returns the best ``k`` (no masking, no re-ranking):
the least a service over the same vectors can do, measured in the same run as mmrec's so
that the machine's load cancels out of the comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException

bundle = Path(os.environ["MMREC_REFERENCE_BUNDLE"])
users = np.load(bundle / "user_vectors.npy", mmap_mode="r")
items = np.load(bundle / "item_vectors.npy", mmap_mode="r")
row_of = {raw: n for n, raw in enumerate(pd.read_parquet(bundle / "users.parquet")["raw_id"].astype(str))}
item_ids = pd.read_parquet(bundle / "items.parquet")["raw_id"].astype(str).to_numpy()
app = FastAPI()


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.get("/users/{user}/recommendations")
async def recommendations(user: str, k: int = 20) -> dict:
    row = row_of.get(user)
    if row is None:
        raise HTTPException(404, f"unknown user {user!r}")
    scores = items @ users[row]  # [I]
    top = np.argpartition(-scores, k)[:k]
    top = top[np.argsort(-scores[top])]
    return {"user": user, "items": [{"item": item_ids[i], "score": float(scores[i])} for i in top]}
