"""dataset=fashion: the Fashion Product Images layout, generated shoppers with stated tastes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmrec.data.fashion import persona_interactions, read_personas, read_styles
from mmrec.data.prepared import DatasetError, load_prepared

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def test_styles_join_unquoted_commas_and_name_the_bad_line(tmp_path):
    (tmp_path / "styles.csv").write_text(HEADER + "7,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Tee, blue, v-neck\n"
                                         "8,Women,Footwear,Shoes,Heels,Red,Fall,2013,Formal,Red Heels\n")
    table = read_styles(tmp_path)
    assert table["productDisplayName"].tolist() == ["Tee, blue, v-neck", "Red Heels"]
    (tmp_path / "styles.csv").write_text(HEADER + "7,Men,Apparel,Topwear,Tshirts,Blue,Summer\n")
    with pytest.raises(DatasetError, match=r"styles.csv, line 2: 7 fields, expected 10"):
        read_styles(tmp_path)
    (tmp_path / "styles.csv").write_text(HEADER + "7,Men,A,T,Tshirts,Blue,Summer,2012,Casual,a\n"
                                         "7,Men,A,T,Tshirts,Blue,Summer,2012,Casual,b\n")
    with pytest.raises(DatasetError, match=r"id 7 appears twice"):
        read_styles(tmp_path)
    with pytest.raises(DatasetError, match=r"no styles.csv or products.csv"):
        read_styles(tmp_path / "nowhere")


def _products(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pick = lambda values: rng.choice(values, n)  # noqa: E731
    return pd.DataFrame({"id": [str(i) for i in range(n)], "gender": pick(["Men", "Women", "Unisex"]),
                         "articleType": pick([f"type{t}" for t in range(12)]),
                         "baseColour": pick(["Black", "Blue", "Red", "White", "Green"]),
                         "usage": pick(["Casual", "Formal", "Sports"]), "season": pick(["Fall", "Summer", "Winter"])})


def test_shoppers_follow_their_stated_taste_and_the_seed():
    products = _products()
    users, items, steps, personas = persona_interactions(products, 200, 15, 0.2, 0.5, 0.7, seed=4)
    again = persona_interactions(products, 200, 15, 0.2, 0.5, 0.7, seed=4)
    assert np.array_equal(users, again[0]) and np.array_equal(items, again[1]) and personas == again[3]
    assert np.bincount(users, minlength=200).min() >= 5
    assert len(np.unique(users * 300 + items)) == len(users)  # no item twice for a shopper
    for u in range(200):  # steps 1..n within each shopper
        assert sorted(steps[users == u].tolist()) == list(range(1, int((users == u).sum()) + 1))
    types, genders = products["articleType"].to_numpy(), products["gender"].to_numpy()
    bought = np.mean([np.isin(types[items[users == u]], personas[u]["articleType"]).mean() for u in range(200)])
    blind = np.mean([np.isin(types, personas[u]["articleType"]).mean() for u in range(200)])
    assert bought > 3 * blind  # taste, not chance
    wrong = np.mean([np.isin(genders[items[users == u]], [g for g in ("Men", "Women") if g != personas[u]["gender"]])
                     .mean() for u in range(200)])
    assert wrong < 0.25  # only the popularity-driven share (20%) ignores the shopper's gender


def test_prepared_shop_has_real_photos_text_and_personas(fashion_shop):
    cfg, path = fashion_shop
    ds = load_prepared(cfg.dataset.root)
    assert (ds.num_users, ds.num_items) == (300, len(list((path / "images").glob("*.jpg"))))
    assert (ds.items["image"] != "").all()  # every product has its photo
    first = ds.items.iloc[0]
    assert first["raw_id"] == "10029" and "Type: Sweatshirts" in first["text"] and "Colour: Navy Blue" in first["text"]
    personas = read_personas(cfg.dataset.root)
    assert len(personas) == 300 and set(personas[0]) == {"shopper", "gender", "articleType", "baseColour", "usage",
                                                         "season"}
    assert ds.users["raw_id"].iloc[5] == "s5"


def test_a_model_trains_on_the_shop(fashion_shop, make_cfg):
    from mmrec.train import train

    cfg, _ = fashion_shop
    run = make_cfg(["dataset=fashion", f"paths.data_dir={cfg.paths.data_dir}", "dataset.source.num_shoppers=300",
                    "model=freedom", "+trainer.fast_dev_run=true", "logger=none"], small=False)
    _, objects = train(run)
    assert objects["run"].data.features.dims == {"image": 64, "text": 64}
