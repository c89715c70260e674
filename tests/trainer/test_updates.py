"""The model-update contract (trainer.updates): the typed header's validation field by field, peek,
and chunking an update into messages and back."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from streamproc.errors import InvalidUpdate
from trainer.scoring import RankWeights
from trainer.updates import ModelUpdate, UpdateHeader, chunk_update, peek, split_rows

VALID: dict[str, Any] = {
    "version": 5, "kind": "delta", "base_version": 4, "global_mean": 3.5, "user_ids": ["u1", "u2"], "item_ids": ["a"],
    "candidate_item_ids": ["a", "b"], "ranking": {"knn": 1.0, "popularity": 0.2, "mf": 0.5, "rating_span": 4.5},
    "expired_user_ids": ["gone"], "expired_item_ids": [], "newest_event_time": 10.0, "newest_published": 11.0,
    "published": [["u1", "a", 11.0]], "offsets": {"reco.examples:0": 7}, "created": 12.0,
}


def test_a_valid_header_round_trips_through_its_wire_form() -> None:
    h = UpdateHeader.from_dict(VALID)
    assert (h.version, h.kind, h.base_version, h.published) == (5, "delta", 4, [("u1", "a", 11.0)])
    assert h.ranking == RankWeights(knn=1.0, popularity=0.2, mf=0.5, rating_span=4.5)
    assert UpdateHeader.from_dict(h.to_dict()) == h
    snap = UpdateHeader.from_dict({"version": 5, "kind": "snapshot", "chunk": 1, "chunks": 3, "deltas_from": 40})
    assert (snap.is_snapshot, snap.chunk, snap.chunks, snap.deltas_from) == (True, 1, 3, 40)
    later = UpdateHeader.from_dict({**VALID, "future_field": {"x": 1}})  # a newer trainer's field: kept, ignored
    assert later.extra == {"future_field": {"x": 1}} and later.to_dict()["future_field"] == {"x": 1}


@pytest.mark.parametrize("field, value", [
    ("version", None), ("version", -1), ("version", "5"), ("version", True), ("version", 5.0),
    ("kind", "full"), ("kind", None),
    ("base_version", 5), ("base_version", 9), ("base_version", -1), ("base_version", "4"),
    ("chunk", 3), ("chunk", -1), ("chunks", 0),
    ("deltas_from", -2), ("deltas_from", "0"),
    ("global_mean", float("nan")), ("global_mean", "3.5"), ("global_mean", float("inf")),
    ("user_ids", "u1"), ("user_ids", ["u1", 2]), ("item_ids", [None]),
    ("candidate_item_ids", ["a", 1]), ("candidate_item_ids", "ab"),
    ("user_candidates", [["a"]]), ("user_candidates", [["a"], [3]]),
    ("ranking", {"knn": "1"}), ("ranking", {"knn": float("nan")}), ("ranking", [1.0]),
    ("expired_user_ids", [1]), ("expired_item_ids", "x"),
    ("newest_event_time", float("nan")), ("newest_published", "now"), ("created", float("inf")),
    ("published", [["u1", "a"]]), ("published", [["u1", "a", "11"]]), ("published", [["u1", 2, 11.0]]), ("published", {"u1": 1}),
    ("offsets", {"reco.examples:0": -1}), ("offsets", {"reco.examples:0": 1.5}), ("offsets", ["x"]),
])
def test_each_bad_field_is_refused_by_name(field: str, value: Any) -> None:
    bad = {**VALID, "chunks": 3, field: value}
    if value is None:
        del bad[field]
    with pytest.raises(InvalidUpdate, match=f"model update header: {field}"):
        UpdateHeader.from_dict(bad)


def test_the_header_must_be_an_object() -> None:
    with pytest.raises(InvalidUpdate, match="JSON object"):
        UpdateHeader.from_dict(["version", 1])


def test_peek_reads_the_header_alone_and_refuses_garbage() -> None:
    u = ModelUpdate(VALID, {"user_bias": np.zeros(2, np.float32), "item_bias": np.zeros(1, np.float32)})
    assert peek(u.encode()) == u.header
    for junk in (b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{}", b"x" * 40):
        with pytest.raises(InvalidUpdate):
            peek(junk)


def test_decode_checks_tensor_rows_and_candidate_indexes() -> None:
    ok = {"user_candidates": np.array([[0, 1], [-1, -1]], np.int32), "user_candidate_scores": np.ones((2, 2), np.float32)}
    assert ModelUpdate.decode(ModelUpdate(VALID, ok).encode()).tensors["user_candidates"].tolist() == [[0, 1], [-1, -1]]
    for tensors, why in [({"user_bias": np.zeros(3, np.float32)}, "3 rows|shape"),
                         ({"item_bias": np.array([np.nan], np.float32)}, "non-finite"),
                         ({**ok, "user_candidates": np.array([[0, 2], [-1, -1]], np.int32)}, "outside candidate_item_ids"),
                         ({**ok, "user_candidates": np.zeros((2, 2), np.int64)}, "int32"),
                         ({**ok, "user_candidate_scores": np.ones((2, 3), np.float32)}, "user_candidate_scores")]:
        with pytest.raises(InvalidUpdate, match=why):
            ModelUpdate.decode(ModelUpdate(VALID, tensors).encode())
    no_ids = {k: v for k, v in VALID.items() if k != "candidate_item_ids"}
    with pytest.raises(InvalidUpdate, match="candidate_item_ids"):
        ModelUpdate.decode(ModelUpdate(no_ids, ok).encode())


def test_split_rows_packs_in_order() -> None:
    assert len(split_rows([], [], [], 100)) == 1
    parts = split_rows([60, 60], [60], [10, 10], 100)
    assert [(p[0].stop - p[0].start, p[1].stop - p[1].start, p[2].stop - p[2].start) for p in parts] == [(1, 0, 0), (1, 0, 0), (0, 1, 2)]


def _update(n_users: int, n_items: int, kind: str, rng: np.random.Generator) -> tuple[UpdateHeader, dict[str, np.ndarray], list[str]]:
    space = [f"item-{j:05d}" for j in range(n_items)]
    cands = rng.integers(-1, n_items, (n_users, 8)).astype(np.int32)
    header = UpdateHeader(version=9, kind=kind, base_version=8 if kind == "delta" else None,  # type: ignore[arg-type]
                          deltas_from=30 if kind == "snapshot" else None, user_ids=[f"user-{u}" for u in range(n_users)],
                          item_ids=space, published=[(f"user-{u}", space[u % n_items], 1.0) for u in range(0, n_users, 7)],
                          expired_user_ids=["gone"], offsets={"reco.examples:0": 3})
    tensors = {"user_factors": rng.normal(size=(n_users, 4)).astype(np.float32), "user_candidates": cands,
               "user_candidate_scores": rng.random((n_users, 8)).astype(np.float32),
               "item_factors": rng.normal(size=(n_items, 4)).astype(np.float32), "item_bias": rng.normal(size=n_items).astype(np.float32)}
    return header, tensors, space


@pytest.mark.parametrize("kind", ["snapshot", "delta"])
def test_chunking_round_trip_keeps_every_row_candidate_and_entry(kind: str) -> None:
    rng = np.random.default_rng(4)
    header, tensors, space = _update(900, 300, kind, rng)
    parts = [ModelUpdate.decode(m.encode()) for m in chunk_update(header, tensors, 8_000, candidate_space=space)]
    assert len(parts) > 3 and all(len(p.encode()) <= 8_000 for p in parts)
    heads = [p.header for p in parts]
    if kind == "snapshot":
        assert {h.version for h in heads} == {9} and [h.chunk for h in heads] == list(range(len(parts)))
        assert {h.chunks for h in heads} == {len(parts)} and {h.deltas_from for h in heads} == {30}
    else:  # consecutive deltas, each based on the one before
        assert [(h.version, h.base_version) for h in heads] == [(9 + n, 8 + n) for n in range(len(parts))]
    assert [h.expired_user_ids for h in heads] == [["gone"]] + [[]] * (len(parts) - 1)
    assert sum((h.user_ids for h in heads), []) == header.user_ids and sum((h.item_ids for h in heads), []) == header.item_ids
    assert sum((h.published for h in heads), []) == header.published
    np.testing.assert_array_equal(np.concatenate([p.tensors["user_factors"] for p in parts if p.header.user_ids]), tensors["user_factors"])
    # each user's candidates name the same items as before: a delta's through the message's own id
    # list, a snapshot's through its whole item list (every chunk's item_ids in chunk order)
    got = []
    joined = sum((h.item_ids for h in heads), [])
    for p in parts:
        if kind == "snapshot":
            assert p.header.candidate_item_ids is None and p.header.snapshot_items == len(joined)
            ids = joined
        else:
            ids = p.header.candidate_item_ids or []
            assert p.header.snapshot_items is None
            assert sorted(set(p.tensors["user_candidates"][p.tensors["user_candidates"] >= 0].tolist())) == list(range(len(ids)))
        got += [[ids[c] if c >= 0 else None for c in row] for row in p.tensors["user_candidates"].tolist()]
    assert got == [[space[c] if c >= 0 else None for c in row] for row in tensors["user_candidates"].tolist()]


@pytest.mark.parametrize("with_candidates", [False, True])
def test_chunks_stay_within_max_bytes_when_rows_are_small(with_candidates: bool) -> None:
    """Ids are JSON inside the safetensors metadata string, so each of their quotes is escaped: with
    many small rows that adds up to more than the header slack (seen at 1M users: parts of 1.0017 MB
    for a 1 MB limit). Ids with quotes, backslashes and non-ASCII characters are escaped further."""
    rng = np.random.default_rng(5)
    header, tensors, space = _update(30_000, 2_000, "snapshot", rng)
    header = dataclasses.replace(header, user_ids=[f"user-{u}" if u % 50 else f'us"er\\-{u}-\u00e9' for u in range(30_000)])
    tensors = {"user_factors": tensors["user_factors"], "item_bias": tensors["item_bias"],
               **({"user_candidates": tensors["user_candidates"]} if with_candidates else {})}
    parts = chunk_update(header, tensors, 100_000, candidate_space=space if with_candidates else None)
    sizes = [len(p.encode()) for p in parts]
    assert len(parts) > 5 and max(sizes) <= 100_000
    assert sum(len(p.header.user_ids) for p in parts) == 30_000
    if not with_candidates:  # and still filled: the estimate is not simply padded (parts with
        assert min(sizes[:-1]) > 90_000, sizes  # candidates are halved when their ids overflow)


def test_chunking_needs_the_candidate_id_space() -> None:
    header, tensors, _ = _update(3, 5, "delta", np.random.default_rng(0))
    with pytest.raises(ValueError, match="candidate_space"):
        chunk_update(header, tensors, 8_000)


@pytest.mark.parametrize("ids", [["u1", "user-22", "x" * 40], ["u1", 'q"uote', "back\\slash", "\u00e9t\u00e9", "tab\there", ""], []])
def test_the_ids_cost_of_a_whole_list_is_each_ids_cost(ids: list[str]) -> None:
    from trainer.updates import _id_bytes, ids_bytes

    assert ids_bytes(ids, 7) == [7 + _id_bytes(x) for x in ids]
