"""The built-in demo data: deterministic, valid events, text whose tone agrees with the rating."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from streamproc.demo_data import CATEGORIES, DemoData, comment_text, sentiment_of
from streamproc.events import EventValidator
from streamproc.settings import Settings

POSITIVE = ("loved", "wonderful", "brilliant", "superb", "adored", "perfect", "gem", "joy", "fantastic", "highly recommended",
            "favourites", "blew me away", "so good", "moving", "stayed with me", "what a film", "watched it twice",
            "ten out of ten", "beautifully", "clever", "everyone should", "watch it again")
NEGATIVE = ("hated", "waste", "disappointing", "gave up", "awful", "not for me", "boring", "mess", "terrible", "dreadful",
            "no sense", "could not stand", "lazy", "letdown", "cheap", "painful", "avoid", "zero stars", "skip", "never again",
            "not recommended", "want those two hours")


def _tone(text: str) -> tuple[int, int]:
    t = text.lower()
    return sum(w in t for w in POSITIVE), sum(w in t for w in NEGATIVE)


def test_same_seed_same_everything_other_seed_differs() -> None:
    a, b, c = DemoData(50, 80, seed=3), DemoData(50, 80, seed=3), DemoData(50, 80, seed=4)
    assert a.catalogue == b.catalogue and a.users == b.users
    assert list(a.events(500)) == list(b.events(500))
    assert [e["item_id"] for e in a.events(500)] != [e["item_id"] for e in c.events(500)]
    assert a.catalogue != c.catalogue


def test_catalogue_has_unique_titles_and_every_category() -> None:
    d = DemoData(10, 1000, seed=1)
    titles = [it.title for it in d.catalogue]
    assert len(set(titles)) == len(titles) == 1000
    assert {it.category for it in d.catalogue} == set(CATEGORIES)
    assert [it.item_id for it in d.catalogue[:3]] == ["i1", "i2", "i3"]
    cat = d.catalog()
    assert cat["items"]["i1"] == {"title": d.catalogue[0].title, "category": d.catalogue[0].category,
                                  "description": d.description(d.catalogue[0])}
    assert d.catalogue[0].category.lower() in cat["items"]["i1"]["description"]
    assert cat["users"][0]["user_id"] == "u1" and cat["users"][0]["likes"]


def test_every_event_passes_the_event_contract() -> None:
    validator = EventValidator(Settings())
    d = DemoData(100, 200, seed=5)
    import time

    kinds = Counter()
    for _, user, raw in d.serialized(3000, rate=500, start=time.time()):
        ev = validator.parse(raw)  # raises InvalidEvent on anything off-contract
        assert ev.user_id == user
        kinds[ev.type] += 1
    assert kinds["click"] > 1000 and kinds["rating"] > 600 and kinds["comment"] > 250


def test_event_times_follow_the_rate_and_ids_are_unique() -> None:
    evs = list(DemoData(10, 20).events(100, rate=50, start=2_000_000_000))
    assert evs[0]["event_time"] == 2_000_000_000 and evs[-1]["event_time"] == pytest.approx(2_000_000_000 + 99 / 50)
    assert len({e["event_id"] for e in evs}) == 100


def test_users_pick_mostly_liked_categories_and_rate_them_higher() -> None:
    d = DemoData(200, 400, seed=11)
    users = {u.user_id: u for u in d.users}
    liked, ratings_liked, ratings_disliked = 0, [], []
    evs = list(d.events(20_000))
    for e in evs:
        u, it = users[e["user_id"]], d.item(e["item_id"])
        liked += it.category in u.likes
        if "rating" in e:
            (ratings_liked if it.category in u.likes else ratings_disliked if it.category == u.dislikes else []).append(e["rating"])
    assert liked / len(evs) > 0.7
    assert sum(ratings_liked) / len(ratings_liked) > sum(ratings_disliked) / len(ratings_disliked) + 1.5


def test_comment_tone_agrees_with_the_rating() -> None:
    comments = [e for e in DemoData(300, 500, seed=2).events(30_000) if e["type"] == "comment"]
    assert len(comments) > 3000
    for e in comments:
        pos, neg = _tone(e["text"])
        tone = sentiment_of(e["rating"])
        if tone == "pos":
            assert pos > 0 and neg == 0, e
        elif tone == "neg":
            assert neg > 0 and pos == 0, e
    texts = [e["text"] for e in comments]
    assert len(set(texts)) > 0.5 * len(texts)  # varied: the encoder has real work


def test_comment_text_is_seeded() -> None:
    assert comment_text(random.Random(9), 5.0, "Comedy") == comment_text(random.Random(9), 5.0, "Comedy")
    assert sentiment_of(1.0) == "neg" and sentiment_of(3.0) == "mix" and sentiment_of(4.5) == "pos"


@pytest.mark.parametrize("kw, name", [({"users": 0}, "users"), ({"items": 1}, "items"),
                                      ({"click_share": 0.9, "comment_share": 0.2}, "click_share")])
def test_arguments_are_checked_up_front(kw: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DemoData(**kw)


def test_serialized_is_compact_json_with_type_first() -> None:
    _, _, raw = next(DemoData(5, 5).serialized(1))
    assert raw.startswith(b'{"schema_version":1,"type":"') and json.loads(raw)["schema_version"] == 1
