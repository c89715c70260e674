"""Replay buffer: bounded, policies, drift preference, row expiry, checkpoint round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.replay import ReplayBuffer


def offer(buf: ReplayBuffer, users: np.ndarray, start: int = 0) -> None:
    n = len(users)
    buf.add_many(users=users, items=np.arange(start, start + n), kinds=np.zeros(n), targets=np.full(n, 3.0),
                 weights=np.ones(n), times=np.arange(start, start + n, dtype=float))


def test_reservoir_is_bounded_and_uniform_over_the_stream() -> None:
    buf = ReplayBuffer(size=1000, policy="reservoir", seed=0)
    for s in range(0, 20_000, 500):
        offer(buf, np.zeros(500, int), start=s)
    items = buf.entries["item"]
    assert len(buf) == 1000 and len(np.unique(items)) == 1000
    # uniform over the whole stream: each half of the stream holds about half the buffer
    assert 400 < (items < 10_000).sum() < 600


def test_recency_keeps_the_latest() -> None:
    buf = ReplayBuffer(size=100, policy="recency", seed=0)
    for s in range(0, 1000, 64):
        offer(buf, np.zeros(min(64, 1000 - s), int), start=s)
    assert len(buf) == 100 and sorted(buf.entries["item"].tolist()) == list(range(900, 1000))
    assert buf.sample(500)["item"].min() >= 900


def test_per_user_gives_every_user_the_same_share() -> None:
    buf = ReplayBuffer(size=1000, policy="per_user", seed=0)
    offer(buf, np.r_[np.zeros(900, int), np.ones(100, int)])  # a heavy and a light user
    share = (buf.sample(4000)["user"] == 1).mean()
    assert 0.4 < share < 0.6
    uniform = ReplayBuffer(size=1000, policy="reservoir", seed=0)
    offer(uniform, np.r_[np.zeros(900, int), np.ones(100, int)])
    assert (uniform.sample(4000)["user"] == 1).mean() < 0.2


def test_favour_recent_replays_only_post_drift_examples_for_a_while() -> None:
    buf = ReplayBuffer(size=1000, policy="reservoir", seed=0)
    offer(buf, np.zeros(500, int))
    buf.favour_recent(200)
    assert len(buf.sample(10)) == 0  # nothing new yet
    offer(buf, np.zeros(100, int), start=500)
    assert buf.sample(200)["item"].min() >= 500
    offer(buf, np.zeros(150, int), start=600)  # past the 200-example horizon: back to normal
    assert buf.sample(2000)["item"].min() < 500


def test_drop_rows_forgets_expired_users_and_items() -> None:
    buf = ReplayBuffer(size=100, policy="recency", seed=0)
    offer(buf, np.arange(10) % 3)
    assert buf.drop_rows(users=np.array([0]), items=np.array([1])) == 5  # users 0: 0,3,6,9; item 1 (user 1)
    assert 0 not in buf.entries["user"] and 1 not in buf.entries["item"]
    offer(buf, np.array([7]), start=50)
    assert buf.entries["item"][-1] == 50


def test_state_round_trip_continues_identically() -> None:
    buf = ReplayBuffer(size=50, policy="per_user", seed=3)
    offer(buf, np.arange(80) % 7)
    meta, arrays = buf.state()
    copy = ReplayBuffer.from_state(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    offer(buf, np.arange(20) % 5, start=100)
    offer(copy, np.arange(20) % 5, start=100)
    assert np.array_equal(buf.sample(30), copy.sample(30))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="policy"):
        ReplayBuffer(policy="fifo")
    with pytest.raises(ValueError, match="size"):
        ReplayBuffer(size=-1)
    empty = ReplayBuffer(size=0)
    offer(empty, np.zeros(10, int))
    assert len(empty) == 0 and len(empty.sample(5)) == 0
