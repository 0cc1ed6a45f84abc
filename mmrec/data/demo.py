"""The demo dataset: generated deterministically, no download, a real test of the method.

Generative story (every draw from one seeded ``numpy`` generator, the time order from a
second stream of the same seed):

* ``num_styles`` latent styles; each has a colour (hue), a shape and a small vocabulary.
* Each item belongs to one style. Its **image** (a PIL drawing: the style's shape in a
  jittered version of the style's colour on a noisy background) and its **text** (title
  and description built from the style's words plus generic filler) both reveal the
  style, imperfectly: a share of items carries a misleading word, colours are jittered.
* Popularity is skewed: within the catalogue, item weight ~ rank^(-popularity_exponent).
* Each user prefers ``styles_per_user`` styles (Dirichlet weights) and takes
  ``noise_share`` of their interactions at random; item choice is sampled without
  replacement with the Gumbel top-k trick, for all users at once.
* **Time order** (``timestamp``: steps 1, 2, ... within each user): interests drift. A user
  visits their preferred styles in phases, in a random order of the styles: every
  interaction with the first style, then every one with the second, ...; interactions with
  any other style (the noise share) fall at uniformly random steps, mixed into all phases
  (:func:`drift_steps`). The latest items thus tell the next item's style better than the
  whole history does: a sequence model can use that, a model of the user-item graph cannot.
  The order only permutes each user's items, so the interactions and the random split are
  those of the unordered generator.
* ``cold_item_share`` of the items are **cold**: none of their interactions is in the
  training split. With ``split=random`` they appear only in validation (half of the cold
  items) and test (the other half); with ``split=leave_last_out`` they are new items,
  released at the end: only their interactions at a user's last two steps are kept (the
  others are dropped), so they reach validation or test and a cold item may be a
  validation item for one user and a test item for another.
* ``split=random`` (default): warm interactions are split per user at random 8:1:1 (the
  MMRec protocol), keeping at least one training interaction per user.
  ``split=leave_last_out``: per user, the latest interaction is test, the one before it
  validation, the rest training (:func:`mmrec.data.splits.split_leave_last_out`).

Features come from the deterministic modality encoders of :mod:`mmrec.features.simple`
(pixel projection for images, hashed bag of words for text).
"""

from __future__ import annotations

import colorsys
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mmrec.data.prepared import write_prepared
from mmrec.data.source import DatasetSource
from mmrec.data.splits import _rank_within_user, split_leave_last_out

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
COLOUR_WORDS = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue",
                "violet", "purple", "magenta", "pink", "crimson", "amber", "olive")
STYLE_WORDS = ("vintage", "sporty", "minimal", "floral", "rustic", "urban", "classic", "bold",
               "cosy", "elegant", "retro", "tropical", "nordic", "glam", "boho", "techy",
               "gothic", "pastel", "preppy", "grunge", "coastal", "safari", "cosmic", "zen")
SPLITS = ("random", "leave_last_out")
FILLER = ("great", "quality", "product", "new", "value", "daily", "use", "gift", "size",
          "easy", "care", "soft", "durable", "light", "pack", "set", "fit", "comfort")


def _draw(shape: str, rgb: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    noise = rng.integers(200, 256, size=(size, size, 3), dtype=np.uint8)  # light noisy background
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    margin = int(rng.integers(size // 10, size // 4))
    box = [margin, margin, size - 1 - margin, size - 1 - margin]
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "cross":
        w = (x1 - x0) / 6
        draw.rectangle([cx - w, y0, cx + w, y1], fill=rgb)
        draw.rectangle([x0, cy - w, x1, cy + w], fill=rgb)
    elif shape == "ring":
        draw.ellipse(box, outline=rgb, width=max(2, size // 10))
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "bar":
        draw.rectangle([x0, cy - (y1 - y0) / 5, x1, cy + (y1 - y0) / 5], fill=rgb)
    else:  # star: two overlaid triangles
        draw.polygon([(cx, y0), (x1, y1 - (y1 - y0) / 4), (x0, y1 - (y1 - y0) / 4)], fill=rgb)
        draw.polygon([(cx, y1), (x1, y0 + (y1 - y0) / 4), (x0, y0 + (y1 - y0) / 4)], fill=rgb)
    return img


def drift_steps(users: np.ndarray, styles: np.ndarray, phases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Time step (1, 2, ...) of every interaction inside its user's history; see the module docstring.

    Args:
        users: [N] user of each interaction.
        styles: [N] style of each interaction's item.
        phases: [U, k] each user's preferred styles in the order they are visited.
        rng: draws the order inside a phase and the steps of the other styles' interactions.
    """
    num_users, k = phases.shape
    phase_of = np.full((num_users, max(int(styles.max(initial=0)), int(phases.max(initial=0))) + 1), -1)
    phase_of[np.arange(num_users)[:, None], phases] = np.arange(k)[None, :]  # [U, S]: phase of a style, -1 none
    phase = phase_of[users, styles]  # [N]
    # a preferred style's interactions fill its phase [p, p + 1); the others spread over [0, k)
    key = np.where(phase >= 0, phase + rng.random(len(users)), k * rng.random(len(users)))
    return _rank_within_user(users, key)[0] + 1


class DemoSource(DatasetSource):
    """Generate the demo dataset into a prepared-dataset folder (tables, images, features).

    Args:
        num_users: number of users.
        num_items: number of items.
        num_styles: number of latent styles.
        styles_per_user: styles each user prefers.
        interactions_per_user: mean interactions per user (at least 5 each).
        noise_share: share of each user's interactions drawn without regard to style.
        popularity_exponent: Zipf exponent of item popularity (0 = uniform).
        cold_item_share: share of items held out of training entirely.
        image_size: side of the generated square images in pixels.
        misleading_text_share: share of items whose text names another style's word.
        feature_dim: dimension of the generated image and text features.
        seed: the one seed of the generator.
        split: ``random`` (per user 8:1:1) or ``leave_last_out`` (per user by time step:
            latest -> test, second latest -> validation).
    """

    # features come with the source (generated / imported .npy), not from the modality_encoder group
    makes_features = True

    def __init__(self, num_users: int = 1000, num_items: int = 800, num_styles: int = 12,
                 styles_per_user: int = 2, interactions_per_user: int = 20,
                 noise_share: float = 0.1, popularity_exponent: float = 0.8,
                 cold_item_share: float = 0.1, image_size: int = 32,
                 misleading_text_share: float = 0.15, feature_dim: int = 64, seed: int = 0,
                 split: str = "random"):
        if num_styles > len(STYLE_WORDS) // 2:  # each style owns a distinct pair of style words
            raise ValueError(f"num_styles={num_styles}: the built-in vocabulary gives at most "
                             f"{len(STYLE_WORDS) // 2} distinct styles")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.num_users = num_users
        self.num_items = num_items
        self.num_styles = num_styles
        self.styles_per_user = styles_per_user
        self.interactions_per_user = interactions_per_user
        self.noise_share = noise_share
        self.popularity_exponent = popularity_exponent
        self.cold_item_share = cold_item_share
        self.image_size = image_size
        self.misleading_text_share = misleading_text_share
        self.feature_dim = feature_dim
        self.seed = seed
        self.split = split

    def describe(self) -> dict:
        return {"type": "demo", **{k: v for k, v in vars(self).items()}}

    def feature_names(self) -> list[str]:
        """The feature stores the demo writes."""
        return ["image", "text"]

    # -- generation -------------------------------------------------------------------
    def generate(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[Image.Image], np.ndarray]:
        """Return ``(interactions, items, users, images, item_style)``; nothing is written."""
        rng = np.random.default_rng(self.seed)
        S, I, U = self.num_styles, self.num_items, self.num_users
        hues = (np.arange(S) / S + rng.uniform(0, 1 / S)) % 1.0
        style_shape = [SHAPES[s % len(SHAPES)] for s in range(S)]
        style_colour = [COLOUR_WORDS[int(h * len(COLOUR_WORDS)) % len(COLOUR_WORDS)] for h in hues]
        words = rng.permutation(len(STYLE_WORDS))
        style_words = [(STYLE_WORDS[words[(2 * s) % len(words)]], STYLE_WORDS[words[(2 * s + 1) % len(words)]])
                       for s in range(S)]

        item_style = rng.integers(0, S, size=I)
        popularity = (rng.permutation(I) + 1.0) ** (-self.popularity_exponent)  # [I]

        images, titles, texts = [], [], []
        for i in range(I):
            s = int(item_style[i])
            hue = (hues[s] + rng.normal(0, 0.02)) % 1.0
            r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.95))
            images.append(_draw(style_shape[s], (int(r * 255), int(g * 255), int(b * 255)),
                                self.image_size, rng))
            w1, w2 = style_words[s]
            if rng.random() < self.misleading_text_share:
                w2 = style_words[int(rng.integers(0, S))][1]
            filler = " ".join(rng.choice(FILLER, size=3, replace=False))
            titles.append(f"{w1.title()} {style_colour[s]} {style_shape[s]} #{i}")
            texts.append(f"A {w1} {style_colour[s]} {style_shape[s]} in {w2} style. {filler}.")

        # User preferences over styles: [U, S]
        pref = np.zeros((U, S))
        chosen = np.argsort(rng.random((U, S)), axis=1)[:, : self.styles_per_user]  # [U, k]
        pref[np.arange(U)[:, None], chosen] = rng.dirichlet(np.ones(self.styles_per_user), size=U)
        # Interaction weight of item i for user u: style preference x popularity, plus noise.
        weight = ((1 - self.noise_share) * pref[:, item_style] / np.bincount(item_style, minlength=S)[item_style]
                  + self.noise_share / I) * popularity[None, :]  # [U, I]
        n_per_user = np.maximum(5, rng.poisson(self.interactions_per_user, size=U))
        n_per_user = np.minimum(n_per_user, I // 2)
        gumbel = -np.log(-np.log(rng.random((U, I))))
        keys = np.log(weight) + gumbel  # Gumbel top-k == sampling without replacement
        order = np.argsort(-keys, axis=1)  # [U, I]
        take = np.arange(I)[None, :] < n_per_user[:, None]  # [U, I]
        users = np.repeat(np.arange(U), n_per_user)
        items = order[take]

        # the user's styles in visiting order: chosen's columns are already a random order
        steps = drift_steps(users, item_style[items], chosen, np.random.default_rng((self.seed, 1)))

        cold = rng.permutation(I)[: int(round(self.cold_item_share * I))]
        if self.split == "leave_last_out":
            users, items, steps, split = self._leave_last_out(users, items, steps, cold)
        else:
            split = self._random_split(users, items, cold, rng)

        interactions = pd.DataFrame({"user": users, "item": items, "rating": 1.0,
                                     "timestamp": steps, "split": split})
        # Users left without training interactions are dropped (rare: needs all-cold picks).
        has_train = np.bincount(users[split == 0], minlength=U) > 0
        interactions = interactions[has_train[interactions["user"].to_numpy()]]
        remap = np.cumsum(has_train) - 1
        interactions["user"] = remap[interactions["user"].to_numpy()]
        users_df = pd.DataFrame({"user": np.arange(int(has_train.sum())),
                                 "raw_id": [f"u{u}" for u in np.flatnonzero(has_train)]})
        items_df = pd.DataFrame({"item": np.arange(I), "raw_id": [f"i{i}" for i in range(I)],
                                 "title": titles, "text": texts,
                                 "image": [f"images/{i}.png" for i in range(I)]})
        return interactions, items_df, users_df, images, item_style

    def _random_split(self, users: np.ndarray, items: np.ndarray, cold: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
        """Cold items: all their interactions go to valid (first half) or test (second half);
        warm ones per user at random 8:1:1."""
        I, U = self.num_items, self.num_users
        cold_valid, cold_test = np.zeros(I, bool), np.zeros(I, bool)
        cold_valid[cold[: len(cold) // 2]] = True
        cold_test[cold[len(cold) // 2:]] = True
        split = np.zeros(len(users), dtype=np.int8)
        # Warm interactions: per-user random 8:1:1 via a random rank within each user.
        warm = ~(cold_valid[items] | cold_test[items])
        warm_idx = np.flatnonzero(warm)
        # Group warm interactions by user, in random order inside each user.
        order = warm_idx[np.lexsort((rng.random(len(warm_idx)), users[warm_idx]))]
        n_warm = np.bincount(users[order], minlength=U)
        rank = np.arange(len(order)) - np.repeat(np.cumsum(n_warm) - n_warm, n_warm)  # position in user
        frac = rank / n_warm[users[order]]
        split[order[(frac >= 0.8) & (frac < 0.9) & (rank > 0)]] = 1
        split[order[(frac >= 0.9) & (rank > 0)]] = 2
        split[cold_valid[items]] = 1
        split[cold_test[items]] = 2
        return split

    def _leave_last_out(self, users: np.ndarray, items: np.ndarray, steps: np.ndarray,
                        cold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cold items are released at the end: their interactions before a user's last two
        steps are dropped. Then latest -> test, second latest -> validation."""
        is_cold = np.zeros(self.num_items, bool)
        is_cold[cold] = True
        length = np.bincount(users, minlength=self.num_users)[users]
        keep = ~is_cold[items] | (steps >= length - 1)
        users, items, steps = users[keep], items[keep], steps[keep]
        split = split_leave_last_out(users, steps, self.seed)
        # a user left with two interactions has no validation one: its second latest would be
        # training, and a cold item must never be
        keep = ~(is_cold[items] & (split == 0))
        return users[keep], items[keep], steps[keep], split[keep]

    def split_rule(self) -> dict:
        """The split as recorded in ``manifest.json``."""
        if self.split == "leave_last_out":
            return {"rule": "leave_last_out", "detail": "per user by the generated time steps: latest -> test, "
                    "second latest -> validation, the rest training; cold items only at a user's last two steps",
                    "cold_items": self.cold_item_share, "seed": self.seed}
        return {"rule": "random_8_1_1_per_user", "cold_items": self.cold_item_share, "seed": self.seed}

    def prepare(self, root: str | Path) -> dict:
        from mmrec.data.features_stage import extract_images, extract_texts
        from mmrec.features.simple import HashedBowEncoder, PixelProjectionEncoder

        root = Path(root)
        interactions, items, users, images, item_style = self.generate()
        (root / "images").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            img.save(root / "images" / f"{i}.png")
        write_prepared(root, name="demo", interactions=interactions, items=items, users=users,
                       split_rule=self.split_rule(),
                       source=self.describe(), expected_features=self.feature_names())
        extract_images(root, "image", PixelProjectionEncoder(dim=self.feature_dim, seed=self.seed))
        return extract_texts(root, "text", HashedBowEncoder(dim=self.feature_dim, seed=self.seed))
