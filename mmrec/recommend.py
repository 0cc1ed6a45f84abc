"""Recommendations from a bundle on the command line.

    python -m mmrec.recommend bundle=<dir> user=<raw id> k=10
    python -m mmrec.recommend bundle=<dir> items='[i1,i7]' diversity=0.3
    python -m mmrec.recommend bundle=<dir> query="space adventure" format=json
    python -m mmrec.recommend bundle=<dir> similar=<item raw id>

Prints a table (rank, id, title, score, because of) or JSON. ``recommend(cfg)`` returns the
list; ``main()`` is the thin Hydra wrapper. A bad bundle or request exits with status 2 and
one line that says what is wrong. A request is bounded by ``recommender.limits`` (``k``, ids,
query length), the same node, and the same checks, as the HTTP service's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mmrec.serving.recommender import Recommendation, RecommendError, recommender_from_config
from mmrec.config_check import check_config
from mmrec.utils import cli
from mmrec.utils.errors import hydra_user_errors


def recommend(cfg: DictConfig) -> list[Recommendation]:
    """The list the config asks for (exactly one of user, items, query, similar)."""
    asked = [name for name in ("user", "items", "query", "similar") if cfg.get(name) not in (None, "", [])]
    if len(asked) != 1:
        raise RecommendError(f"give exactly one of user=<id>, items=[...], query=\"...\", similar=<id> "
                             f"(got {asked or 'none'})")
    rec = recommender_from_config(cfg)
    exclude = [str(i) for i in cfg.exclude or []]
    kind = asked[0]
    if kind == "user":
        return rec.recommend([str(cfg.user)], k=cfg.k, exclude_seen=cfg.exclude_seen, exclude=exclude,
                             diversity=cfg.diversity)[0]
    if kind == "items":
        items = cfg["items"]
        items = [str(i) for i in items] if OmegaConf.is_list(items) or isinstance(items, list) else [str(items)]
        return rec.recommend_for_items(items, k=cfg.k, exclude=exclude, diversity=cfg.diversity)
    if kind == "query":
        answer = rec.answer_visitor(None, str(cfg.query), k=cfg.k, exclude=exclude, diversity=cfg.diversity)
        if answer.notice:
            print(f"note: {answer.notice}", file=sys.stderr)
        return answer.items
    return rec.similar_items(str(cfg.similar), k=cfg.k)


def format_table(recs: list[Recommendation], similar: bool = False) -> str:
    """A plain table: rank, id, title, score, because of (title of the history item most like it)
    and, with a learned ranker, the candidate sources that proposed each item.
    ``similar``: the list of ``similar=<id>``, which compares content on purpose (its footnote
    says so instead of "the model cannot score these items")."""
    ranker = any(r.proposed_by is not None for r in recs)
    rows: list[list[Any]] = [["rank", "id", "title", "score", "because of"] + (["proposed by"] if ranker else [])]
    for r in recs:
        because = "" if r.because is None else f"{r.because_title} ({r.because})"
        rows.append([r.rank, r.item, r.title, f"{r.score:.4f}" + ("*" if r.source == "content" else ""), because]
                    + ([" + ".join(r.proposed_by or [])] if ranker else []))
    widths = [min(max(len(str(row[c])) for row in rows), 48) for c in range(len(rows[0]))]
    lines = ["  ".join(str(v)[:w].ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if similar and any(r.source == "content" for r in recs):
        lines.append("* similarity of the items' content (image / text) to the given item, not the model's score")
    elif any(r.source == "content" for r in recs):
        lines.append("* by content similarity alone: the model cannot score these items")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="conf", config_name="recommend")
def main(cfg: DictConfig) -> None:
    with hydra_user_errors():
        check_config(cfg)  # value ranges (recommender settings, limits): one line, before the bundle loads
        recs = recommend(cfg)
    if cfg.format == "json":
        print(json.dumps([r.as_dict() for r in recs], indent=2))
    elif cfg.format == "table":
        print(format_table(recs, similar=cfg.get("similar") not in (None, "")) if recs else "(no recommendations)")
    else:
        print(f"error: format={cfg.format!r}: use table or json", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli.run(main, "recommend")  # a mistyped key or choice: one error line (mmrec.utils.cli)
