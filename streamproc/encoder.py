"""Comment encoding: a sentence encoder (transformers, offline) behind a micro-batcher.

:class:`TextEncoder` loads ``AutoTokenizer``/``AutoModel`` from ``settings.encoder_dir`` (default:
the packaged all-MiniLM-L6-v2, 384-d) with ``HF_HUB_OFFLINE=1`` and ``local_files_only``, once per
process (:func:`get_encoder` caches it), and turns texts into L2-normalised mean-pooled embeddings.
Texts are truncated to the model's maximum tokens; a batch is sorted by length before padding.

:class:`MicroBatcher` collects texts from any thread into batches of at most ``max_batch_size``,
waiting at most ``max_wait_ms`` after the first text of a batch, and encodes them on its own
thread: latency stays bounded at low load, throughput high at high load.

Examples
--------
>>> import numpy as np
>>> mb = MicroBatcher(lambda texts: np.ones((len(texts), 2), np.float32), max_batch_size=4, max_wait_ms=1)
>>> [f.result().tolist() for f in mb.submit_many(["a", "b"])]
[[1.0, 1.0], [1.0, 1.0]]
>>> mb.close()
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from streamproc.errors import ConfigError, RecoError
from streamproc.settings import Settings

__all__ = ["TextEncoder", "MicroBatcher", "get_encoder", "EncodeFn"]

log = logging.getLogger(__name__)

# OpenMP threads that spin between ops starve the worker's event loop (and each other) on a
# small, shared machine: measured on 2 loaded cores, a single-comment encode took ~400 ms with the
# default (active) policy and ~27 ms passive, and batch throughput was no lower. Read by libgomp
# when torch is first imported, so it is set here, before the lazy torch import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EncodeFn = Callable[[Sequence[str]], np.ndarray]


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers model.

    Parameters
    ----------
    model_dir
        Directory with the tokenizer and the model weights (no network access is attempted).
    threads
        ``torch.set_num_threads`` for inference.
    quantize
        Apply int8 dynamic quantization (per-channel weights) to the ``Linear`` layers.

    Examples
    --------
    >>> enc = get_encoder(Settings())
    >>> v = enc.encode(["a funny film", "hilarious movie"])
    >>> v.shape, bool(abs(float((v[0] ** 2).sum()) - 1) < 1e-4)
    ((2, 384), True)
    """

    def __init__(self, model_dir: str, *, threads: int = 2, quantize: bool = False) -> None:
        if not model_dir or not Path(model_dir).is_dir():
            raise ConfigError(f"RECO_MODEL_DIR={model_dir!r}: not a directory with a transformers model")
        if threads < 1:
            raise ValueError(f"threads: {threads} must be >= 1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # workers log to stderr line by line, no bars

        self.model_dir = model_dir
        self.threads = threads
        self.quantize = quantize
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RecoError(f"could not load the encoder from {model_dir}: {exc}") from exc
        model.eval()
        if quantize:
            # Per-channel weights: on 2,000 real tags cosine to fp32 is 0.966 mean / 0.86 min,
            # against 0.929 / 0.77 per-tensor; still not close enough to be the default.
            from torch.ao.quantization import per_channel_dynamic_qconfig

            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        self._model = model
        self._torch = torch
        self.max_tokens = _max_tokens(model_dir, self._tokenizer, model)
        self.dim = int(model.config.hidden_size)
        log.info("encoder %s loaded in %.1f s (dim %d, max %d tokens, %d threads%s)", Path(model_dir).parent.name,
                 time.perf_counter() - t0, self.dim, self.max_tokens, threads, ", int8" if quantize else "")

    def encode(self, texts: Sequence[str], *, sort: bool = True) -> np.ndarray:
        """Embeddings of ``texts``, float32 ``[len(texts), dim]``, rows of unit L2 norm.

        ``sort`` orders the batch by length before padding (less padding), then restores the order.
        """
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        order = sorted(range(n), key=lambda i: len(texts[i])) if sort and n > 1 else list(range(n))
        batch = [texts[i] for i in order]
        torch = self._torch
        with torch.inference_mode():
            tok = self._tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            out = self._model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                              **({"token_type_ids": tok["token_type_ids"]} if "token_type_ids" in tok else {}))
            hidden = out.last_hidden_state
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            emb = pooled.numpy().astype(np.float32, copy=False)
        if order != list(range(n)):
            result = np.empty_like(emb)
            result[order] = emb
            return result
        return emb


def _max_tokens(model_dir: str, tokenizer: Any, model: Any) -> int:
    """The model's maximum sequence length: sentence-transformers config, else tokenizer/model limits."""
    limits = [int(model.config.max_position_embeddings)]
    st = Path(model_dir) / "sentence_bert_config.json"
    if st.is_file():
        try:
            limits.append(int(json.loads(st.read_text())["max_seq_length"]))
        except (ValueError, KeyError):
            pass
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        limits.append(tml)
    return min(limits)


_CACHE: dict[tuple[str, int, bool], TextEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_encoder(settings: Settings) -> TextEncoder:
    """The process-wide encoder for these settings (loaded on first use, then reused)."""
    key = (settings.encoder_dir, settings.torch_threads, settings.quantize_encoder)
    with _CACHE_LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = _CACHE[key] = TextEncoder(key[0], threads=key[1], quantize=key[2])
        return enc


_STOP = object()


class MicroBatcher:
    """Batches texts submitted from any thread and encodes them on a background thread.

    A batch is encoded as soon as it holds ``max_batch_size`` texts, or ``max_wait_ms`` after its
    first text arrived, whichever comes first. Each text gets a :class:`concurrent.futures.Future`
    resolving to its embedding row (or to the encoder's exception). Batches complete in submission
    order.

    Parameters
    ----------
    encode_fn
        ``texts -> float32 [n, dim]`` (e.g. ``TextEncoder.encode``).
    max_batch_size
        Most texts per ``encode_fn`` call.
    max_wait_ms
        Longest the first text of a batch waits for the batch to fill.
    on_batch
        Called as ``on_batch(size, seconds)`` after every encoder call (metrics).
    """

    def __init__(self, encode_fn: EncodeFn, *, max_batch_size: int = 32, max_wait_ms: float = 20.0,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: {max_batch_size} must be >= 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: {max_wait_ms} must be >= 0")
        self.encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="reco-encoder", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, encode_fn: EncodeFn | None = None, **kw: Any) -> "MicroBatcher":
        fn = encode_fn if encode_fn is not None else get_encoder(settings).encode
        return cls(fn, max_batch_size=settings.encode_batch_size, max_wait_ms=settings.encode_max_wait_ms, **kw)

    def submit(self, text: str) -> "Future[np.ndarray]":
        """Queue one text; the future resolves to its embedding (float32 ``[dim]``)."""
        if self._closed:
            raise RecoError("micro-batcher is closed")
        fut: Future[np.ndarray] = Future()
        self._queue.put((text, fut))
        return fut

    def submit_many(self, texts: Sequence[str]) -> list["Future[np.ndarray]"]:
        return [self.submit(t) for t in texts]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking convenience: embeddings of ``texts`` through the batcher."""
        futs = self.submit_many(texts)
        return np.stack([f.result() for f in futs]) if futs else np.zeros((0, 0), np.float32)

    def close(self, timeout: float = 30.0) -> None:
        """Encode what is queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        q, wait_s, size = self._queue, self.max_wait_ms / 1000.0, self.max_batch_size
        stopping = False
        while not stopping:
            item = q.get()
            if item is _STOP:
                break
            batch = [item]
            deadline = time.monotonic() + wait_s
            while len(batch) < size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            self._encode(batch)
        # drain anything submitted before close()
        rest = []
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        for i in range(0, len(rest), size):
            self._encode(rest[i : i + size])

    def _encode(self, batch: list[tuple[str, Future[np.ndarray]]]) -> None:
        t0 = time.perf_counter()
        try:
            emb = self.encode_fn([t for t, _ in batch])
            if len(emb) != len(batch):
                raise RecoError(f"encoder returned {len(emb)} rows for {len(batch)} texts")
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting future
            log.exception("encoder failed on a batch of %d texts", len(batch))
            for _, fut in batch:
                fut.set_exception(exc)
            return
        finally:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
        for (_, fut), row in zip(batch, emb):
            fut.set_result(row)
