"""Built-in demo data: a generated catalogue, users with tastes, and a stream of app events.

Nothing is downloaded and nothing has to sit beside the clone: ``reco demo``, ``reco replay`` and
``reco load`` use this generator when no dataset is named. Everything follows from ``seed``:

- a **catalogue** of ``items`` titled items, each in one of :data:`CATEGORIES`, with a hidden
  quality and a long-tailed popularity;
- ``users`` **users**, each liking one to three categories and disliking one, some far more
  active than others;
- a **stream** of ``click``, ``rating`` and ``comment`` events: a user picks an item (mostly from
  the categories they like, weighted by popularity), rates it as their taste says (plus noise),
  and sometimes writes a comment composed from phrase banks whose tone agrees with that rating
  (a 1-star comment reads negative, a 5-star one positive; 3 stars reads mixed).

Examples
--------
>>> demo = DemoData(users=20, items=30, seed=1)
>>> len(demo.catalogue), len(demo.users)
(30, 20)
>>> evs = list(demo.events(200))
>>> sorted({e["type"] for e in evs})
['click', 'comment', 'rating']
>>> evs == list(DemoData(users=20, items=30, seed=1).events(200))  # deterministic
True
>>> c = next(e for e in evs if e["type"] == "comment")
>>> isinstance(c["text"], str) and 0.5 <= c["rating"] <= 5.0
True
"""

from __future__ import annotations

import json
import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, count
from pathlib import Path
from typing import Any

from streamproc.events import event_dict

__all__ = ["DemoData", "DemoItem", "DemoUser", "CATEGORIES", "DEFAULT_START", "comment_text", "sentiment_of"]

DEFAULT_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: event times of a replay that is not live

# category -> (title adjectives, title nouns, aspects a comment talks about)
_BANKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Sci-Fi": (("Distant", "Quantum", "Silent", "Last", "Hollow", "Binary", "Red", "Final", "Outer", "Neon"),
               ("Orbit", "Signal", "Frontier", "Colony", "Horizon", "Machine", "Nebula", "Protocol", "Station", "Drift"),
               ("the world-building", "the space battles", "the science", "the spaceship design", "the premise", "the AI subplot")),
    "Comedy": (("Accidental", "Wild", "Awkward", "Lucky", "Crazy", "Little", "Big", "Perfect", "Second", "Unlikely"),
               ("Wedding", "Vacation", "Roommates", "Weekend", "Neighbours", "Road Trip", "Reunion", "Detour", "Party", "Plan"),
               ("the jokes", "the timing", "the banter", "the slapstick", "the lead duo", "the punchlines")),
    "Drama": (("Quiet", "Broken", "Long", "Bitter", "Open", "Golden", "Fragile", "Winter", "Honest", "Paper"),
              ("Years", "Letters", "House", "River", "Promise", "Season", "Daughter", "Harvest", "Silence", "Window"),
              ("the acting", "the script", "the family story", "the lead performance", "the dialogue", "the ending")),
    "Horror": (("Dark", "Hungry", "Crooked", "Pale", "Whispering", "Buried", "Cursed", "Rotten", "Endless", "Blind"),
               ("Cellar", "Woods", "Doll", "Asylum", "Hour", "Mirror", "Lake", "Visitor", "Chapel", "Night"),
               ("the scares", "the atmosphere", "the creature effects", "the tension", "the sound design", "the villain")),
    "Romance": (("Sweet", "Summer", "Endless", "Secret", "Late", "First", "Stolen", "Lovely", "Tender", "Paris"),
                ("Kiss", "Letters", "Promise", "Affair", "Serenade", "Heart", "Dance", "Rendezvous", "Crush", "Vows"),
                ("the chemistry", "the love story", "the leads", "the soundtrack", "the meet-cute", "the romance")),
    "Action": (("Iron", "Rogue", "Deadly", "Maximum", "Hard", "Rapid", "Steel", "Savage", "Lethal", "Total"),
               ("Strike", "Target", "Pursuit", "Vendetta", "Protocol", "Extraction", "Fury", "Siege", "Impact", "Run"),
               ("the fight scenes", "the car chases", "the stunts", "the pacing", "the explosions", "the hero")),
    "Animation": (("Brave", "Tiny", "Magic", "Flying", "Happy", "Little", "Curious", "Sleepy", "Jolly", "Wandering"),
                  ("Dragon", "Robot", "Kingdom", "Fox", "Island", "Lantern", "Balloon", "Forest", "Penguin", "Toybox"),
                  ("the animation", "the colours", "the songs", "the characters", "the humour", "the voice cast")),
    "Documentary": (("Hidden", "Deep", "Lost", "Wild", "Frozen", "Untold", "Vanishing", "Living", "Ancient", "Rising"),
                    ("Planet", "Oceans", "Empire", "Cities", "Machines", "Harvest", "Rivers", "Voices", "Frontiers", "Archive"),
                    ("the footage", "the research", "the narration", "the interviews", "the photography", "the subject")),
}
CATEGORIES: tuple[str, ...] = tuple(_BANKS)

# Phrase banks by tone. A comment is an opener, a verdict on one aspect, and sometimes a closer.
_OPEN = {
    "pos": ("Loved it.", "What a film!", "Absolutely wonderful.", "This one stayed with me.", "Brilliant.",
            "Watched it twice already.", "A real gem.", "So good.", "Fantastic from start to finish.", "Pure joy."),
    "neg": ("Hated it.", "What a waste of time.", "Really disappointing.", "I gave up halfway.", "Awful.",
            "Not for me at all.", "Painfully boring.", "A mess.", "I want those two hours back.", "Terrible."),
    "mix": ("It was okay.", "Mixed feelings.", "Not bad, not great.", "Watchable.", "Decent enough.",
            "Some good moments.", "Fine for a rainy evening.", "Average.", "It had its moments.", "So-so."),
}
_VERDICT = {
    "pos": ("{aspect} {was} superb", "{aspect} {was} genuinely moving", "I adored {aspect}", "{aspect} {was} perfect",
            "{aspect} blew me away", "{aspect} {was} clever and fresh", "{aspect} {was} beautifully done"),
    "neg": ("{aspect} {was} dreadful", "{aspect} made no sense", "I could not stand {aspect}", "{aspect} {was} lazy",
            "{aspect} {was} a letdown", "{aspect} felt cheap and dull", "{aspect} {was} painful to sit through"),
    "mix": ("{aspect} {was} fine but forgettable", "{aspect} worked, the rest less so", "{aspect} {was} uneven",
            "I liked {aspect}, though it drags", "{aspect} {was} hit and miss", "{aspect} {was} decent, nothing more"),
}
_CLOSE = {
    "pos": ("Highly recommended!", "Ten out of ten.", "Can't wait to watch it again.", "Everyone should see this.",
            "One of my favourites now."),
    "neg": ("Avoid.", "Zero stars if I could.", "Skip it.", "Never again.", "Not recommended."),
    "mix": ("Maybe worth a look.", "Wait for it to be free.", "Your mileage may vary.", "Good for background viewing.",
            "Three stars, roughly."),
}


def sentiment_of(rating: float) -> str:
    """The tone a comment with this rating takes: ``pos`` (≥ 4), ``neg`` (≤ 2) or ``mix``."""
    return "pos" if rating >= 4.0 else "neg" if rating <= 2.0 else "mix"


def comment_text(rng: random.Random, rating: float, category: str, title: str | None = None) -> str:
    """A comment whose tone agrees with ``rating``, about an aspect typical of ``category``.

    >>> comment_text(random.Random(0), 1.0, "Horror")
    'Painfully boring. The tension was painful to sit through. Not recommended.'
    """
    tone = sentiment_of(rating)
    aspect = rng.choice(_BANKS[category][2] if category in _BANKS else ("the story",))
    verdict = rng.choice(_VERDICT[tone]).format(aspect=aspect, was="were" if aspect.endswith("s") and not aspect.endswith("ss") else "was")
    parts = [rng.choice(_OPEN[tone]), verdict[0].upper() + verdict[1:] + "."]
    if rng.random() < 0.4:
        parts.append(rng.choice(_CLOSE[tone]))
    if title and rng.random() < 0.2:
        parts.insert(0, f"{title}:")
    return " ".join(parts)


@dataclass(frozen=True)
class DemoItem:
    item_id: str
    title: str
    category: str
    quality: float  # hidden: added to every user's expected rating
    popularity: float  # hidden: relative chance of being picked


@dataclass(frozen=True)
class DemoUser:
    user_id: str
    likes: tuple[str, ...]
    dislikes: str
    activity: float  # hidden: relative chance of being the next user to act


class DemoData:
    """A seeded generator of a catalogue, users and their feedback events.

    Parameters
    ----------
    users
        How many users (ids ``u1`` … ``uN``).
    items
        How many catalogue items (ids ``i1`` … ``iN``).
    seed
        Everything (catalogue, tastes, the event stream) follows from it.
    click_share, comment_share
        Share of events that are clicks and comments; the rest are ratings.
    """

    def __init__(self, users: int = 500, items: int = 1000, seed: int = 42, *, click_share: float = 0.45,
                 comment_share: float = 0.15) -> None:
        if users < 1:
            raise ValueError(f"users: must be >= 1, got {users}")
        if items < 2:
            raise ValueError(f"items: must be >= 2, got {items}")
        if not (0 <= click_share and 0 <= comment_share and click_share + comment_share <= 1):
            raise ValueError(f"click_share, comment_share: must be >= 0 and sum to <= 1, got {click_share}, {comment_share}")
        self.n_users, self.n_items, self.seed = users, items, seed
        self.click_share, self.comment_share = click_share, comment_share
        rng = random.Random(f"catalogue-{seed}")
        self.catalogue = self._make_items(rng, items)
        self.users = self._make_users(random.Random(f"users-{seed}"), users)
        self._by_id = {it.item_id: it for it in self.catalogue}
        self._by_cat: dict[str, list[DemoItem]] = {c: [] for c in CATEGORIES}
        for it in self.catalogue:
            self._by_cat[it.category].append(it)
        self._cum_items = list(accumulate(it.popularity for it in self.catalogue))
        self._cum_cat = {c: list(accumulate(it.popularity for it in its)) for c, its in self._by_cat.items() if its}
        self._cum_users = list(accumulate(u.activity for u in self.users))

    # ------------------------------------------------------------------ building
    @staticmethod
    def _make_items(rng: random.Random, n: int) -> list[DemoItem]:
        out, used = [], set()
        for i in range(n):
            cat = CATEGORIES[i % len(CATEGORIES)] if i < len(CATEGORIES) else rng.choice(CATEGORIES)
            adjs, nouns, _ = _BANKS[cat]
            for attempt in count():
                title = f"The {rng.choice(adjs)} {rng.choice(nouns)}" if rng.random() < 0.5 else f"{rng.choice(adjs)} {rng.choice(nouns)}"
                if attempt or rng.random() < 0.15:
                    title += rng.choice((" II", " III", ": Reborn", ": The Return", " Returns", ": Origins", " Forever"))
                title += f" ({rng.randrange(1960, 2026)})"
                if title not in used:
                    break
            used.add(title)
            quality = max(-1.5, min(1.5, rng.gauss(0.0, 0.5)))
            popularity = 1.0 / (1 + rng.random() * n) ** 0.8  # long tail
            out.append(DemoItem(f"i{i + 1}", title, cat, round(quality, 3), popularity))
        return out

    @staticmethod
    def _make_users(rng: random.Random, n: int) -> list[DemoUser]:
        out = []
        for u in range(n):
            likes = tuple(rng.sample(CATEGORIES, rng.choice((1, 2, 2, 3))))
            dislikes = rng.choice([c for c in CATEGORIES if c not in likes])
            activity = math.exp(rng.gauss(0.0, 1.0))  # a few heavy users, many light ones
            out.append(DemoUser(f"u{u + 1}", likes, dislikes, activity))
        return out

    # ------------------------------------------------------------------ reading
    def item(self, item_id: str) -> DemoItem:
        return self._by_id[item_id]

    def expected_rating(self, user: DemoUser, item: DemoItem) -> float:
        """The rating ``user`` would give ``item`` before noise (0.5 … 5)."""
        r = 3.0 + item.quality + (1.3 if item.category in user.likes else 0.0) - (1.8 if item.category == user.dislikes else 0.0)
        return max(0.5, min(5.0, r))

    def description(self, item: DemoItem) -> str:
        """A short blurb about ``item`` (its category's vocabulary; seeded by the item): the text an
        item record carries, so the encoder has something to place a cold item with.

        >>> d = DemoData(users=2, items=3, seed=1)
        >>> d.description(d.catalogue[0]) == d.description(d.catalogue[0])
        True
        """
        rng = random.Random(f"description-{self.seed}-{item.item_id}")
        adjs, nouns, aspects = _BANKS.get(item.category, (("new",), ("story",), ("the story",)))
        a, b = rng.sample(list(aspects), 2) if len(aspects) > 1 else (aspects[0], aspects[0])
        return (f"A {rng.choice(adjs).lower()} {item.category.lower()} film about a {rng.choice(nouns).lower()}, "
                f"known for {a} and {b}.")

    def catalog(self) -> dict[str, Any]:
        """The catalogue as serving reads it (``reco serve --catalog``): titles, categories,
        descriptions (published as item records too), users."""
        return {
            "source": f"demo (seed {self.seed})",
            "items": {it.item_id: {"title": it.title, "category": it.category, "description": self.description(it)}
                      for it in self.catalogue},
            "users": [{"user_id": u.user_id, "likes": list(u.likes), "dislikes": u.dislikes} for u in self.users[:50]],
        }

    def write_catalog(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.catalog(), separators=(",", ":")))
        return path

    # ------------------------------------------------------------------ the stream
    def events(self, n: int | None = None, *, rate: float = 100.0, start: float = DEFAULT_START,
               id_prefix: str | None = None) -> Iterator[dict[str, Any]]:
        """``n`` events (None: without end), ``event_time`` spaced ``1/rate`` s apart from ``start``.

        The same seed gives the same users, items, types, ratings and texts whatever ``start``.
        """
        if rate <= 0:
            raise ValueError(f"rate: must be > 0, got {rate}")
        if n is not None and n < 0:
            raise ValueError(f"n: must be >= 0, got {n}")
        rng = random.Random(f"events-{self.seed}")
        prefix = f"demo{self.seed}-" if id_prefix is None else id_prefix
        i = 0
        while n is None or i < n:
            user = self.users[bisect_right(self._cum_users, rng.random() * self._cum_users[-1])]
            if rng.random() < 0.75:
                cat = rng.choice(user.likes)
                cum, pool = self._cum_cat[cat], self._by_cat[cat]
            else:
                cum, pool = self._cum_items, self.catalogue
            item = pool[min(len(pool) - 1, bisect_right(cum, rng.random() * cum[-1]))]
            ev = event_dict("click", user.user_id, item.item_id, event_id=f"{prefix}{i}", event_time=round(start + i / rate, 3))
            kind = rng.random()
            if kind >= self.click_share:
                rating = self.expected_rating(user, item) + rng.gauss(0.0, 0.6)
                ev["rating"] = max(0.5, min(5.0, round(rating * 2) / 2))
                if kind >= 1.0 - self.comment_share:
                    ev["type"] = "comment"
                    ev["text"] = comment_text(rng, ev["rating"], item.category, item.title)
                else:
                    ev["type"] = "rating"
            yield ev
            i += 1

    def serialized(self, n: int | None = None, **kw: Any) -> Iterator[tuple[float, str, bytes]]:
        """:meth:`events` as ``(event_time, user_id, JSON bytes)``, what the replay publishes."""
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for ev in self.events(n, **kw):
            yield ev["event_time"], ev["user_id"], dumps(ev).encode()
