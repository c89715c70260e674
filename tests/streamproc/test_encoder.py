"""Comment encoder (the real packaged model) and the micro-batcher (with a fake encode function)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamproc.encoder import MicroBatcher, get_encoder
from streamproc.settings import Settings


@pytest.fixture(scope="module")
def encoder():
    return get_encoder(Settings())


def test_embeddings_are_384d_unit_norm(encoder) -> None:
    v = encoder.encode(["a funny film", "dark and violent", "Highly quotable"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


def test_similar_texts_are_closer_than_unrelated_ones(encoder) -> None:
    a, b, c = encoder.encode(["a hilarious comedy, very funny", "funny movie that made me laugh", "tax law for small businesses"])
    assert float(a @ b) > float(a @ c) + 0.2


def test_a_5000_char_text_is_truncated_not_rejected(encoder) -> None:
    long = ("space opera with great visual effects " * 200)[:5000]
    v = encoder.encode([long, "short"])
    assert v.shape == (2, 384) and np.isfinite(v).all()
    assert encoder.max_tokens == 256


def test_order_is_kept_when_the_batch_is_sorted_by_length(encoder) -> None:
    texts = ["a much longer comment about the cinematography and the score", "ok", "nice acting"]
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_the_model_is_loaded_once_per_process(encoder) -> None:
    assert get_encoder(Settings()) is encoder


class _Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, texts):
        with self.lock:
            self.sizes.append(len(texts))
        return np.array([[len(t), 1.0] for t in texts], np.float32)


def test_batches_never_exceed_the_max_size_and_fill_under_load() -> None:
    fn = _Recorder()
    mb = MicroBatcher(fn, max_batch_size=8, max_wait_ms=10_000)  # a long wait: only size can close a batch
    futs = mb.submit_many([f"t{i}" * (i % 3 + 1) for i in range(64)])
    rows = [f.result(timeout=30) for f in futs]
    mb.close()
    assert fn.sizes == [8] * 8
    assert [r[0] for r in rows] == [len(f"t{i}" * (i % 3 + 1)) for i in range(64)]  # each future gets its own row


def test_a_lone_text_is_encoded_after_the_max_wait_without_a_full_batch() -> None:
    fn = _Recorder()
    mb = MicroBatcher(fn, max_batch_size=32, max_wait_ms=5)
    fut = mb.submit("only one")
    assert fut.result(timeout=30)[0] == len("only one")
    assert fn.sizes == [1]
    mb.close()


def test_texts_arriving_within_the_wait_share_a_batch() -> None:
    fn = _Recorder()
    mb = MicroBatcher(fn, max_batch_size=32, max_wait_ms=60_000)
    futs = [mb.submit(f"t{i}") for i in range(5)]
    deadline = time.monotonic() + 0.3  # watch briefly: nothing may be encoded while the batch is open
    while not fn.sizes and not any(f.done() for f in futs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(f.done() for f in futs)
    mb.close()  # close flushes the open batch
    assert [f.result(timeout=30)[0] for f in futs] == [2.0] * 5
    assert fn.sizes == [5]


def test_encoder_errors_reach_every_future_of_the_batch_and_the_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(texts):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return np.zeros((len(texts), 2), np.float32)

    mb = MicroBatcher(flaky, max_batch_size=4, max_wait_ms=10_000)
    first = mb.submit_many(["a", "b", "c", "d"])
    for f in first:
        with pytest.raises(RuntimeError, match="boom"):
            f.result(timeout=30)
    assert mb.submit_many(["e"] * 4)[0].result(timeout=30).shape == (2,)
    mb.close()


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(lambda t: t, max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(lambda t: t, max_wait_ms=-1)
