"""Comment encoder (the real packaged model, every backend), its bounded batching, the ONNX export
cache, the bench's sentiment head, and the micro-batcher (with a fake encode function)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamproc import encoder as encoder_mod
from streamproc.bench.encoder import _auc, review_texts, sentiment_auc
from streamproc.encoder import (
    CALL_COST_TOKENS,
    SLICE_TEXTS,
    MicroBatcher,
    TextEncoder,
    _batches,
    auto_backend,
    get_encoder,
    native_bf16,
)
from streamproc.errors import ConfigError, RecoError
from streamproc.settings import Settings

REVIEWS = [
    "The food was cold, the waiter ignored us for forty minutes and the bill was wrong. Never again.",
    "Absolutely loved this place! Friendly staff, fresh pasta, and the tiramisu was the best I have had in years.",
    "It was fine. Parking is a pain on weekends but the coffee is decent and the wifi works.",
    ("We came for a birthday dinner and stayed for three hours. " * 12).strip(),
    "ok",
]


@pytest.fixture(scope="module")
def encoder():
    return get_encoder(Settings())


@pytest.fixture(scope="module")
def fp32():
    return get_encoder(Settings(encoder_backend="torch"))


@pytest.fixture(scope="module")
def int8():
    return get_encoder(Settings(encoder_backend="onnx-int8"))


@pytest.fixture(scope="module")
def openvino(fp32):
    pytest.importorskip("openvino")
    return TextEncoder(fp32.model_dir, backend="openvino")  # converted once into the default cache


def test_the_default_backend_follows_the_cpu(encoder) -> None:
    assert encoder.backend == auto_backend()
    assert encoder.backend == ("onnx-int8" if not native_bf16() else "openvino" if encoder_mod._have("openvino") else "torch-bf16")


@pytest.mark.parametrize("bf16, installed, device, expected", [
    (True, True, "cpu", "openvino"), (True, False, "cpu", "torch-bf16"), (False, True, "cpu", "onnx-int8"),
    (True, True, "cuda", "torch"),
])
def test_auto_picks_the_measured_fastest_backend_for_the_cpu(monkeypatch, bf16, installed, device, expected) -> None:
    monkeypatch.setattr(encoder_mod, "native_bf16", lambda: bf16)
    monkeypatch.setattr(encoder_mod, "_have", lambda module: installed)
    assert auto_backend(device) == expected


def test_an_unknown_backend_is_a_clear_error(fp32) -> None:
    with pytest.raises(ConfigError, match=r"RECO_ENCODER_BACKEND='ctranslate'.*openvino"):
        TextEncoder(fp32.model_dir, backend="ctranslate")


def test_openvino_missing_is_a_clear_error(fp32, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ConfigError, match=r"RECO_ENCODER_BACKEND='openvino'.*pip install openvino"):
        TextEncoder(fp32.model_dir, backend="openvino")


def test_openvino_is_close_to_fp32(openvino, fp32) -> None:
    v = openvino.encode(REVIEWS)
    assert v.shape == (len(REVIEWS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    cos = (v * fp32.encode(REVIEWS)).sum(axis=1)
    assert cos.min() > 0.995, cos


def test_openvino_batches_stay_bounded_with_rounded_widths(openvino, fp32) -> None:
    small = TextEncoder(fp32.model_dir, backend="openvino", batch_tokens=256)
    small.batch_shapes = []
    topics = ["tax law", "pizza crust", "dog grooming", "jazz concert", "car repair", "hotel pool", "sushi rice",
              "dentist visit", "yoga class", "bike shop", "wine list", "movie theater"]
    texts = [f"a review about the {t}. " * (1 + 3 * i) for i, t in enumerate(topics)] + ["ok"]
    v = small.encode(texts)  # several batches on the runtime's streams at once
    assert small.batch_shapes and all(b * t <= 256 or b == 1 for b, t in small.batch_shapes)
    assert all(t % (8 if t <= 32 else 16) == 0 or t == small.max_tokens for _, t in small.batch_shapes)
    assert sum(b for b, _ in small.batch_shapes) == len(texts)
    ref = fp32.encode(texts)
    cos = (v * ref).sum(axis=1)  # rows in the texts' order, padding masked out
    assert cos.min() > 0.995, cos
    assert ((v @ ref.T).argmax(axis=1) == np.arange(len(texts))).all()  # each row is its own text's


def test_batches_are_cut_where_padding_is_least() -> None:
    lengths = [10] * 8 + [200] * 2  # filling each call to the budget would pad the short texts to 200
    batches = _batches(list(range(10)), lengths, 2048)
    assert batches == [list(range(8)), [8, 9]]
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 257, 500).tolist()
    order = sorted(range(500), key=lengths.__getitem__)
    cut = _batches(order, lengths, 2048)
    assert [i for b in cut for i in b] == order  # every text once, in order
    assert all(len(b) * max(lengths[i] for i in b) <= 2048 for b in cut)
    greedy = _batches(order, lengths, 2048, sort=False)

    def cost(bs):
        return sum(len(b) * max(lengths[i] for i in b) + CALL_COST_TOKENS for b in bs)

    assert cost(cut) < cost(greedy)


def test_bf16_is_close_to_fp32(fp32) -> None:
    bf16 = get_encoder(Settings(encoder_backend="torch-bf16"))
    v = bf16.encode(REVIEWS)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert (v * fp32.encode(REVIEWS)).sum(axis=1).min() > 0.995


def test_onnx_int8_is_close_to_fp32(int8, fp32) -> None:
    cos = (int8.encode(REVIEWS) * fp32.encode(REVIEWS)).sum(axis=1)
    assert cos.min() > 0.95 and cos.mean() > 0.98


def test_onnx_fp32_matches_the_transformers_model(fp32) -> None:
    onnx32 = get_encoder(Settings(encoder_backend="onnx"))
    np.testing.assert_allclose(onnx32.encode(REVIEWS), fp32.encode(REVIEWS), atol=1e-4)


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


def test_order_is_kept_when_the_batch_is_sorted_by_length(int8, fp32) -> None:
    texts = ["a much longer comment about the cinematography and the score", "ok", "nice acting"]
    together = fp32.encode(texts)
    alone = np.stack([fp32.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    # int8 activations are scaled per model call, so batch-mates move a row a little, never far
    # ("ok" beside a 13-word comment: cosine ~0.96 to "ok" alone)
    cos = (int8.encode(texts) * np.stack([int8.encode([t])[0] for t in texts])).sum(axis=1)
    assert cos.min() > 0.93


def test_10000_texts_encode_in_bounded_batches(monkeypatch) -> None:
    """The model never sees more than batch_tokens padded tokens (nor the tokenizer more than a
    slice of texts) at once, however many texts come in one call; rows keep their texts' order."""
    enc = TextEncoder.__new__(TextEncoder)  # the real tokenizer and limits, a recording model
    enc.__dict__.update(get_encoder(Settings()).__dict__)
    enc.batch_tokens = 2048
    enc.batch_shapes = []
    tokenized: list[int] = []
    real_tok = enc._tokenizer

    def tokenizer(texts, **kw):
        tokenized.append(len(texts))
        return real_tok(texts, **kw)

    def infer(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), enc.dim), np.float32)
        out[:, 0] = mask.sum(axis=1)  # each row says how many tokens its text had
        return out

    enc._tokenizer = tokenizer
    enc._ov_queue = None  # openvino runs batches on its streams; here each goes to the recording model in turn
    monkeypatch.setattr(enc, "_infer", infer)
    words = "great food friendly staff but slow service and loud music".split()
    texts = [" ".join(words[: 1 + i % len(words)]) * (1 + (i % 7 == 0) * 60) for i in range(10_000)]
    emb = enc.encode(texts)
    assert emb.shape == (10_000, enc.dim)
    assert max(b * t for b, t in enc.batch_shapes) <= 2048
    assert max(t for _, t in enc.batch_shapes) <= enc.max_tokens == 256
    assert max(tokenized) <= SLICE_TEXTS and sum(tokenized) == 10_000
    expected = [min(len(real_tok(t)["input_ids"]), 256) for t in texts[:50]]
    assert emb[:50, 0].tolist() == expected  # row i is text i's, despite the length ordering
    # length ordering keeps padding small: padded tokens at most 10 % above the real ones
    assert sum(b * t for b, t in enc.batch_shapes) <= 1.1 * emb[:, 0].sum()


def test_a_text_longer_than_the_batch_budget_still_goes_alone(fp32) -> None:
    small = TextEncoder(fp32.model_dir, backend="torch", batch_tokens=16)
    small.batch_shapes = []
    v = small.encode([REVIEWS[3], "ok"])
    assert small.batch_shapes and all(b == 1 for b, _ in small.batch_shapes)
    np.testing.assert_allclose(v, fp32.encode([REVIEWS[3], "ok"]), atol=1e-4)


def test_max_tokens_truncates_and_is_capped_at_the_models_limit(fp32) -> None:
    assert TextEncoder(fp32.model_dir, backend="torch", max_tokens=100_000).max_tokens == 256
    short = TextEncoder(fp32.model_dir, backend="torch", max_tokens=16)
    short.batch_shapes = []
    short.encode([REVIEWS[3]])
    assert short.batch_shapes == [(1, 16)]


@pytest.mark.parametrize("env, needle", [
    ({"RECO_ENCODER_BACKEND": "ctranslate"}, "RECO_ENCODER_BACKEND='ctranslate'"),
    ({"RECO_ENCODER_DEVICE": "tpu"}, "RECO_ENCODER_DEVICE='tpu'"),
    ({"RECO_ENCODER_MAX_TOKENS": "2"}, "RECO_ENCODER_MAX_TOKENS=2"),
    ({"RECO_ENCODER_BATCH_TOKENS": "lots"}, "RECO_ENCODER_BATCH_TOKENS='lots'"),
])
def test_encoder_settings_are_checked_at_start_up(env: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env=env)
    assert needle in str(err.value)


def test_cuda_without_a_gpu_is_a_clear_error(fp32) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="RECO_ENCODER_DEVICE='cuda'"):
        TextEncoder(fp32.model_dir, device="cuda")


def _fake_export(calls: list, *, fail: bool = False):
    def run(cmd, **kw):
        calls.append(cmd)
        if fail:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nRuntimeError: export exploded")
        target = Path(cmd[-1])
        (target / "model.onnx").write_bytes(b"fp32")
        (target / "model.int8.onnx").write_bytes(b"int8")
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_the_onnx_export_runs_once_and_is_reused_from_the_cache(fp32, tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(encoder_mod.subprocess, "run", _fake_export(calls))
    first = encoder_mod.onnx_export(fp32.model_dir, str(tmp_path / "cache"))
    again = encoder_mod.onnx_export(fp32.model_dir, str(tmp_path / "cache"), quantized=False)
    assert first.read_bytes() == b"int8" and again.read_bytes() == b"fp32" and first.parent == again.parent
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "streamproc.encoder", "export"]
    assert first.is_relative_to(tmp_path / "cache")


def test_an_unwritable_cache_falls_back_to_a_temporary_directory(fp32, tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(encoder_mod.subprocess, "run", _fake_export(calls))
    monkeypatch.setattr(encoder_mod.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = encoder_mod.onnx_export(fp32.model_dir, str(blocker / "cache"))
    assert path.is_relative_to(tmp_path / "tmp") and len(calls) == 1


def test_the_openvino_conversion_runs_once_and_is_reused_from_the_cache(fp32, tmp_path, monkeypatch) -> None:
    pytest.importorskip("openvino")
    calls: list = []

    def run(cmd, **kw):
        calls.append(cmd)
        (Path(cmd[-1]) / "model.xml").write_bytes(b"<net/>")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(encoder_mod.subprocess, "run", run)
    first = encoder_mod.openvino_convert(fp32.model_dir, str(tmp_path / "cache"))
    again = encoder_mod.openvino_convert(fp32.model_dir, str(tmp_path / "cache"))
    assert first == again and first.name == "model.xml" and first.is_relative_to(tmp_path / "cache")
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "streamproc.encoder", "convert-openvino"]


def test_a_failed_openvino_conversion_names_the_cause(fp32, tmp_path, monkeypatch) -> None:
    pytest.importorskip("openvino")
    monkeypatch.setattr(encoder_mod.subprocess, "run", _fake_export([], fail=True))
    with pytest.raises(RecoError, match=r"(?s)OpenVINO conversion of .* failed .*export exploded"):
        encoder_mod.openvino_convert(fp32.model_dir, str(tmp_path))


def test_a_failed_export_names_the_model_and_the_cause(fp32, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(encoder_mod.subprocess, "run", _fake_export([], fail=True))
    with pytest.raises(RecoError, match=r"(?s)ONNX export of .* failed .*export exploded"):
        encoder_mod.onnx_export(fp32.model_dir, str(tmp_path))


def test_auc_and_the_sentiment_head() -> None:
    assert _auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert _auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.6
    emb = rng.normal(size=(400, 8)) + y[:, None] * 1.5  # separable-ish
    ratings = np.where(y, 5.0, 1.0).tolist()
    auc, n_train, n_test = sentiment_auc(emb, ratings)
    assert auc is not None and auc > 0.9 and (n_train, n_test) == (200, 200)
    flipped, _, _ = sentiment_auc(emb, ratings[:200] + [6.0 - r for r in ratings[200:]])
    assert flipped is not None and flipped < 0.1  # a head that learned nothing would sit near 0.5
    assert sentiment_auc(emb, [3.0] * 400)[0] is None  # only neutral ratings: no AUC


def test_review_texts_read_a_file_and_name_a_missing_one(tmp_path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text('{"user_id": "u1", "item_id": "i1", "rating": 5, "time": 2, "text": "great"}\n'
                 '{"user_id": "u2", "item_id": "i1", "rating": 1, "time": 1, "text": "awful"}\n'
                 '{"user_id": "u3", "item_id": "i2", "rating": 3, "time": 3}\n')
    texts, ratings, source = review_texts(f)
    assert texts == ["awful", "great"] and ratings == [1.0, 5.0] and "2 reviews" in source
    with pytest.raises(RecoError, match="nope.jsonl"):
        review_texts(tmp_path / "nope.jsonl")


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


def test_review_texts_fall_back_to_built_in_comments_without_the_sample(tmp_path, monkeypatch) -> None:
    from streamproc.bench import encoder as bench

    monkeypatch.setattr(bench, "DEFAULT_REVIEWS", tmp_path / "absent.jsonl")
    texts, ratings, source = review_texts(None, 300)
    assert len(texts) == len(ratings) == 300 and all(texts) and "demo-data comments" in source and "--reviews" in source
    assert sentiment_auc(np.zeros((300, 4)), ratings)[1] > 0  # rated: the bench's AUC has data to train on
