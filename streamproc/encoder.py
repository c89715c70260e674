"""Comment encoding: a sentence encoder (local model, offline) behind a micro-batcher.

:class:`TextEncoder` turns texts into L2-normalised mean-pooled embeddings of the model in
``settings.encoder_dir`` (default: the packaged all-MiniLM-L6-v2, 384-d), loaded once per process
(:func:`get_encoder` caches it). Backends (``RECO_ENCODER_BACKEND``):

- ``auto`` (default): where the CPU computes bfloat16 natively (AMX or AVX512-BF16) ``openvino``
  (``torch-bf16`` when the openvino package is absent), else ``onnx-int8``.
- ``openvino``: the OpenVINO CPU runtime, bfloat16 where the CPU computes it natively (its default
  precision there), fp32 elsewhere. On Yelp reviews, measured on the same AMX Xeon against the
  other backends: the most reviews per CPU-second, cosine 1.0000 to fp32 (README, Encoder). The
  model is converted from the local transformers model at first use, in a child process, and
  cached in ``RECO_ENCODER_CACHE_DIR`` like the ONNX export (nothing is downloaded).
- ``torch-bf16``: the transformers model in bfloat16. On Yelp reviews 2.6x the fp32 model's
  throughput per core at cosine 1.0000 to it (README, Encoder); slow on CPUs without native bf16.
- ``onnx-int8``: ONNX Runtime with int8 (per-channel) weights and fused attention. The ONNX graph is
  exported from the local model at first use, in a child process, and cached in
  ``RECO_ENCODER_CACHE_DIR`` (nothing is downloaded). 1.4x fp32 per core, cosine 0.993 (torch
  dynamic int8: 1.5x, cosine 0.977); int8 activations are scaled per call, so a row moves a little
  with its batch-mates.
- ``onnx``: the same graph with fp32 weights.
- ``torch``: the transformers model (fp32, or int8 dynamic with ``RECO_QUANTIZE_ENCODER``); with
  ``RECO_ENCODER_DEVICE=cuda`` the model runs on the GPU.

Memory is bounded for any number of texts: :meth:`TextEncoder.encode` tokenizes in slices of
:data:`SLICE_TEXTS`, orders each slice by token count (little padding) and calls the model on
batches of at most ``RECO_ENCODER_BATCH_TOKENS`` padded tokens, cut where padding plus a per-call
cost is least (:func:`_batches`). Texts are truncated to
``RECO_ENCODER_MAX_TOKENS`` (256, the model's maximum: 128 measured cosine 0.957 to full length on
real reviews).

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

import contextlib
import hashlib
import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.errors import ConfigError, RecoError
from streamproc.settings import Settings

__all__ = ["TextEncoder", "MicroBatcher", "get_encoder", "EncodeFn", "BACKENDS", "default_cache_dir"]

log = logging.getLogger(__name__)

# OpenMP threads that spin between ops starve the worker's event loop (and each other) on a
# small, shared machine: measured on 2 loaded cores, a single-comment encode took ~400 ms with the
# default (active) policy and ~27 ms passive, and batch throughput was no lower. Read by libgomp
# when torch is first imported, so it is set here, before the lazy torch import below. ONNX
# Runtime's own pool gets the same policy (session.intra_op.allow_spinning=0).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EncodeFn = Callable[[Sequence[str]], np.ndarray]

BACKENDS = ("auto", "openvino", "torch-bf16", "onnx-int8", "onnx", "torch")
#: Texts tokenized (and ordered by length) together; bounds the token lists held at once.
SLICE_TEXTS = 1024
#: Most texts in one model call, however short.
MAX_BATCH_TEXTS = 256
#: Padded tokens one model call costs beyond its tokens (fixed per-call work), in the batch cutting
#: (:func:`_batches`). Measured per CPU-second on 2,000 ml-latest-small tags in batches of 32
#: (reviews did not move): openvino +30 % and torch-bf16 +40 % at 160 against 64; onnx-int8 the
#: other way (-15 %), so it keeps :data:`ONNX_CALL_COST_TOKENS`.
CALL_COST_TOKENS = 160
ONNX_CALL_COST_TOKENS = 64
#: Padded widths are rounded up to a multiple of this on the openvino backend (of half of it up to
#: twice it): its CPU plugin prepares kernels per input shape and keeps them, so fewer distinct
#: shapes cost less. Measured per CPU-second, worker batches of 32: Yelp reviews +10 % (16 against
#: none; 8 gave +5 %), ml-latest-small tags +11 % (8 against none; 16 everywhere: -15 %).
OPENVINO_WIDTH_STEP = 16
#: Bumped when the exported graph changes, so stale cached exports are not reused.
EXPORT_VERSION = 2
#: The same for the OpenVINO conversion.
OPENVINO_VERSION = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX or AVX512-BF16; Linux flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def auto_backend(device: str = "cpu") -> str:
    """What ``RECO_ENCODER_BACKEND=auto`` picks here: the fastest backend measured on this class of
    CPU among those within the accuracy bounds (README, Encoder)."""
    if device != "cpu":
        return "torch"
    if native_bf16():
        return "openvino" if _have("openvino") else "torch-bf16"
    return "onnx-int8"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/reco/encoder``, else ``~/.cache/reco/encoder``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "reco" / "encoder"


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local transformers model.

    Parameters
    ----------
    model_dir
        Directory with the tokenizer and the model weights (no network access is attempted).
    threads
        Intra-op threads for inference (torch or ONNX Runtime).
    quantize
        ``torch`` backend: apply int8 dynamic quantization (per-channel weights) to the ``Linear`` layers.
    backend
        ``auto``, ``openvino``, ``torch-bf16``, ``onnx-int8``, ``onnx`` or ``torch`` (see the module docstring).
    max_tokens
        Tokens per text, the rest truncated; capped at the model's maximum (0 = the model's maximum).
    batch_tokens
        Most padded tokens (texts x longest text) in one model call; a longer text still goes alone.
    device
        ``cpu`` or ``cuda`` (``torch`` backend on the GPU; an error when no GPU is visible).
    cache_dir
        Where ONNX exports and OpenVINO conversions are cached ("" = :func:`default_cache_dir`).

    Examples
    --------
    >>> enc = get_encoder(Settings())
    >>> v = enc.encode(["a funny film", "hilarious movie"])
    >>> v.shape, bool(abs(float((v[0] ** 2).sum()) - 1) < 1e-4)
    ((2, 384), True)
    """

    def __init__(self, model_dir: str, *, threads: int = 2, quantize: bool = False, backend: str = "torch",
                 max_tokens: int = 0, batch_tokens: int = 2048, device: str = "cpu", cache_dir: str = "") -> None:
        if not model_dir or not Path(model_dir).is_dir():
            raise ConfigError(f"RECO_MODEL_DIR={model_dir!r}: not a directory with a transformers model")
        if threads < 1:
            raise ValueError(f"threads: {threads} must be >= 1")
        if backend not in BACKENDS:
            raise ConfigError(f"RECO_ENCODER_BACKEND={backend!r}: not one of {', '.join(BACKENDS)}")
        if max_tokens < 0:
            raise ValueError(f"max_tokens: {max_tokens} must be >= 0")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens: {batch_tokens} must be >= 1")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device: {device!r} must be cpu or cuda")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # workers log to stderr line by line, no bars

        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"RECO_ENCODER_DEVICE='cuda': no CUDA device is visible to torch {torch.__version__}")
        if backend == "auto":
            backend = auto_backend(device)
        if device == "cuda" and backend != "torch":
            log.info("RECO_ENCODER_DEVICE=cuda: the transformers model runs on the GPU (backend %s is CPU-only)", backend)
            backend = "torch"
        if backend == "torch-bf16" and not native_bf16():
            log.warning("RECO_ENCODER_BACKEND=torch-bf16 on a CPU without native bfloat16: expect it slower than fp32")
        self.model_dir = model_dir
        self.threads = threads
        self.quantize = quantize
        self.backend = backend
        self.batch_tokens = batch_tokens
        self.device = device
        self.cache_dir = cache_dir
        torch.set_num_threads(threads)
        self._torch = torch
        t0 = time.perf_counter()
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RecoError(f"could not load the encoder from {model_dir}: {exc}") from exc
        self.dim = int(config.hidden_size)
        model_max = _max_tokens(model_dir, self._tokenizer, config)
        self.max_tokens = min(max_tokens, model_max) if max_tokens else model_max
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._model: Any = None
        self._session: Any = None
        self._ov_request: Any = None
        self._ov_queue: Any = None
        self._ov_lock = threading.RLock()
        #: Padded widths rounded up to a multiple of this (1: none; see OPENVINO_WIDTH_STEP).
        self.width_step = OPENVINO_WIDTH_STEP if backend == "openvino" else 1
        #: Per-call cost in padded tokens when cutting batches (see CALL_COST_TOKENS).
        self.call_cost = ONNX_CALL_COST_TOKENS if backend in ("onnx", "onnx-int8") else CALL_COST_TOKENS
        #: What the model computes in: fp32, bf16 or int8 (weights; the openvino backend asks its runtime).
        self.precision = {"torch-bf16": "bf16", "onnx-int8": "int8", "onnx": "fp32"}.get(backend, "int8" if quantize and device == "cpu" else "fp32")
        if backend in ("torch", "torch-bf16"):
            self._load_torch()
        elif backend == "openvino":
            self._load_openvino()
        else:
            self._load_onnx(quantized=backend == "onnx-int8")
        #: Shapes ``(texts, tokens)`` of the model calls, when a test sets it to a list.
        self.batch_shapes: list[tuple[int, int]] | None = None
        log.info("encoder %s loaded in %.1f s (%s%s, dim %d, max %d tokens, %d threads, %s)", Path(model_dir).parent.name,
                 time.perf_counter() - t0, backend, " int8" if backend == "torch" and quantize else "", self.dim,
                 self.max_tokens, threads, device)

    @classmethod
    def from_settings(cls, settings: Settings) -> TextEncoder:
        return cls(settings.encoder_dir, threads=settings.torch_threads, quantize=settings.quantize_encoder,
                   backend=settings.encoder_backend, max_tokens=settings.encoder_max_tokens,
                   batch_tokens=settings.encoder_batch_tokens, device=settings.encoder_device,
                   cache_dir=settings.encoder_cache_dir)

    # ------------------------------------------------------------------ backends
    def _load_torch(self) -> None:
        torch = self._torch
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RecoError(f"could not load the encoder from {self.model_dir}: {exc}") from exc
        model.eval()
        if self.quantize and self.device == "cpu" and self.backend == "torch":
            # Per-channel weights: on 2,000 real tags cosine to fp32 is 0.966 mean / 0.86 min,
            # against 0.929 / 0.77 per-tensor; on real reviews 0.977 (ONNX Runtime int8: 0.993).
            from torch.ao.quantization import per_channel_dynamic_qconfig

            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
        if self.backend == "torch-bf16":
            model = model.to(torch.bfloat16)
        self._model = model.to(self.device)

    def _load_onnx(self, *, quantized: bool) -> None:
        try:
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigError(f"RECO_ENCODER_BACKEND={self.backend!r}: onnxruntime is not installed ({exc}); "
                              "pip install onnxruntime, or set RECO_ENCODER_BACKEND=torch") from exc
        path = onnx_export(self.model_dir, self.cache_dir, quantized=quantized, threads=self.threads)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see OMP_WAIT_POLICY above
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file: name it
            raise RecoError(f"could not load the cached ONNX encoder {path}: {exc} (delete it to re-export)") from exc
        self._onnx_inputs = {i.name for i in self._session.get_inputs()}

    def _load_openvino(self) -> None:
        try:
            import openvino as ov  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigError(f"RECO_ENCODER_BACKEND='openvino': openvino is not installed ({exc}); "
                              "pip install openvino, or set RECO_ENCODER_BACKEND=torch-bf16 or onnx-int8") from exc
        path = openvino_convert(self.model_dir, self.cache_dir, threads=self.threads)
        core = ov.Core()
        try:
            # One single-threaded stream per thread, the batches of an encode() call spread over them:
            # 1.47x the reviews/s of one two-threaded stream, +7 % per CPU-second (800 Yelp reviews in
            # worker batches of 32); the model's small matrices keep two threads on one call apart.
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "THROUGHPUT",
                "NUM_STREAMS": self.threads,
                "ENABLE_CPU_PINNING": False,  # a shared machine: threads pinned to busy cores wait
            })
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file: name it
            raise RecoError(f"could not load the cached OpenVINO encoder {path}: {exc} (delete it to convert again)") from exc
        self._ov_request = compiled.create_infer_request()
        self._ov_queue = ov.AsyncInferQueue(compiled, self.threads)
        self._ov_queue.set_callback(_ov_done)
        self.precision = {"bf16": "bf16", "f32": "fp32"}.get(compiled.get_property("INFERENCE_PRECISION_HINT").to_string(), "?")

    def _infer(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pooled, normalised embeddings of one padded batch (int64 ``[b, t]`` arrays)."""
        if self._ov_request is not None:
            with self._ov_lock:  # an infer request serves one call at a time
                out = self._ov_request.infer({"input_ids": input_ids, "attention_mask": attention_mask})
                return np.array(out[0], dtype=np.float32)  # a copy: the request reuses its output buffer
        if self._session is not None:
            feed = {"input_ids": input_ids, "attention_mask": attention_mask}
            if "token_type_ids" in self._onnx_inputs:
                feed["token_type_ids"] = np.zeros_like(input_ids)
            return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        torch = self._torch
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            out = self._model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
            return _pool(torch, out.last_hidden_state.float(), mask).cpu().numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], *, sort: bool = True) -> np.ndarray:
        """Embeddings of ``texts``, float32 ``[len(texts), dim]``, rows of unit L2 norm.

        Any number of texts in bounded memory: tokenized in slices, each model call at most
        ``batch_tokens`` padded tokens. ``sort`` orders each slice by token count before batching
        (less padding); the result keeps the order of ``texts`` either way.
        """
        with self._ov_lock if self._ov_queue is not None else contextlib.nullcontext():
            return self._encode(texts, sort)

    def _encode(self, texts: Sequence[str], sort: bool) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self.dim), np.float32)
        queue = self._ov_queue  # openvino: batches run on its streams side by side
        for start in range(0, n, SLICE_TEXTS):
            part = [t if isinstance(t, str) else str(t) for t in texts[start : start + SLICE_TEXTS]]
            ids = self._tokenizer(part, truncation=True, max_length=self.max_tokens, add_special_tokens=True,
                                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            lengths = [len(x) for x in ids]
            order = sorted(range(len(ids)), key=lengths.__getitem__) if sort else list(range(len(ids)))
            for batch in _batches(order, lengths, self.batch_tokens, sort=sort, step=self.width_step, cap=self.max_tokens,
                                  call_cost=self.call_cost):
                width = _padded(max(lengths[i] for i in batch), self.width_step, self.max_tokens)
                input_ids = np.full((len(batch), width), self._pad_id, np.int64)
                mask = np.zeros((len(batch), width), np.int64)
                for row, i in enumerate(batch):
                    input_ids[row, : lengths[i]] = ids[i]
                    mask[row, : lengths[i]] = 1
                if self.batch_shapes is not None:
                    self.batch_shapes.append((len(batch), width))
                rows = [start + i for i in batch]
                if queue is not None:
                    queue.start_async({"input_ids": input_ids, "attention_mask": mask}, (out, rows))
                else:
                    out[rows] = self._infer(input_ids, mask)
        if queue is not None:
            queue.wait_all()
        return out


def _ov_done(request: Any, userdata: tuple[np.ndarray, list[int]]) -> None:
    """OpenVINO's callback for a finished batch: its rows into the output (a copy of the request's buffer)."""
    out, rows = userdata
    out[rows] = request.get_output_tensor(0).data


def _padded(width: int, step: int, cap: int) -> int:
    """``width`` rounded up to a multiple of ``step`` (of ``step // 2`` up to ``2 * step``), never
    past ``cap`` (or ``width``)."""
    if step <= 1:
        return width
    s = max(1, step // 2) if width <= 2 * step else step
    return max(width, min(-(-width // s) * s, cap))


def _batches(order: list[int], lengths: list[int], budget: int, *, sort: bool = True, step: int = 1,
             cap: int = 0, call_cost: int = CALL_COST_TOKENS) -> list[list[int]]:
    """Consecutive runs of ``order`` whose padded size (texts x longest, the width rounded by
    :func:`_padded` with ``step`` and ``cap``) stays within ``budget`` (a text longer than the budget
    goes alone), at most :data:`MAX_BATCH_TEXTS` texts each.

    ``order`` by ascending length (``sort``): the cuts that make the padded tokens plus
    ``call_cost`` per call least (dynamic programming over the cut points; on Yelp reviews in the
    worker's batches of 32, 13 % fewer than filling each call to the budget at a cost of 64).
    Otherwise each call is filled up to the budget.
    """
    n = len(order)
    if not sort:
        batches: list[list[int]] = []
        cur: list[int] = []
        width = 0
        for i in order:
            w = max(width, lengths[i])
            if cur and (_padded(w, step, cap) * (len(cur) + 1) > budget or len(cur) >= MAX_BATCH_TEXTS):
                batches.append(cur)
                cur, w = [], lengths[i]
            cur.append(i)
            width = w
        if cur:
            batches.append(cur)
        return batches
    # best[j]: least cost of the first j texts; a batch order[i:j] is as wide as its last text.
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, np.int64)
    for j in range(1, n + 1):
        w = max(1, _padded(lengths[order[j - 1]], step, cap))
        lo = j - max(1, min(MAX_BATCH_TEXTS, budget // w, j))
        starts = np.arange(lo, j)
        cost = best[lo:j] + (j - starts) * w + call_cost
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], lo + k
    out: list[list[int]] = []
    j = n
    while j > 0:
        i = int(cut[j])
        out.append(order[i:j])
        j = i
    return out[::-1]


def _pool(torch: Any, hidden: Any, mask: Any) -> Any:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def _max_tokens(model_dir: str, tokenizer: Any, config: Any) -> int:
    """The model's maximum sequence length: sentence-transformers config, else tokenizer/model limits."""
    limits = [int(config.max_position_embeddings)]
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


# ---------------------------------------------------------------------- ONNX export, OpenVINO conversion (cached)
def _model_key(model_dir: str, tools: str) -> str:
    """Changes with the model files and ``tools`` (the converter and runtime versions)."""
    h = hashlib.sha256(tools.encode())
    root = Path(model_dir).resolve()
    h.update(str(root).encode())
    for p in sorted(root.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _writable(d: Path) -> bool:
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d):
            pass
        return True
    except OSError:
        return False


def _cache_root(cache_dir: str) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if not _writable(root):
        fallback = Path(tempfile.gettempdir()) / f"reco-encoder-{os.getuid() if hasattr(os, 'getuid') else 0}"
        log.warning("encoder cache %s is not writable; converting into %s (set RECO_ENCODER_CACHE_DIR)", root, fallback)
        root = fallback
        fallback.mkdir(parents=True, exist_ok=True)
    return root


def _cached(model_dir: str, target: Path, path: Path, *, what: str, command: str, threads: int) -> Path:
    """``path`` (inside ``target``), made first when absent by ``python -m streamproc.encoder
    COMMAND MODEL_DIR TARGET`` in a child process; one process converts while others wait."""
    if path.is_file():
        return path
    target.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits for the first one's conversion
        if path.is_file():
            return path
        t0 = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "streamproc.encoder", command, str(model_dir), str(target)]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as exc:
            raise RecoError(f"{what} of {model_dir} took over 900 s") from exc
        if done.returncode != 0 or not path.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise RecoError(f"{what} of {model_dir} into {target} failed (exit {done.returncode}):\n{tail}")
        log.info("encoder: %s in %.1f s: %s", what, time.perf_counter() - t0, target)
    return path


def onnx_export(model_dir: str, cache_dir: str = "", *, quantized: bool = True, threads: int = 2) -> Path:
    """Path of the cached ONNX graph of ``model_dir`` (pooling and normalisation included),
    exporting it first when absent.

    The export runs in a child process: tracing the model for export leaves the exporting
    process's transformers model computing different embeddings (measured: cosine 0.965 to its own
    output before the export), and the child's memory goes back to the system when it ends. A
    cache directory that cannot be written falls back to a temporary one, with a warning.
    """
    import onnxruntime
    import torch

    key = _model_key(model_dir, f"v{EXPORT_VERSION} torch {torch.__version__} ort {onnxruntime.__version__}")
    target = _cache_root(cache_dir) / f"{Path(model_dir).resolve().parent.name or 'model'}-{key}"
    path = target / ("model.int8.onnx" if quantized else "model.onnx")
    return _cached(model_dir, target, path, what="ONNX export", command="export", threads=threads)


def openvino_convert(model_dir: str, cache_dir: str = "", *, threads: int = 2) -> Path:
    """Path of the cached OpenVINO model (``model.xml``, fp32 weights, pooling and normalisation
    included) of ``model_dir``, converting it first when absent, in a child process as
    :func:`onnx_export` does (same cache directory, its own subdirectory per model and versions)."""
    import openvino
    import torch

    key = _model_key(model_dir, f"ov{OPENVINO_VERSION} torch {torch.__version__} openvino {openvino.__version__}")
    target = _cache_root(cache_dir) / f"{Path(model_dir).resolve().parent.name or 'model'}-openvino-{key}"
    return _cached(model_dir, target, target / "model.xml", what="OpenVINO conversion", command="convert-openvino", threads=threads)


def _convert_openvino(model_dir: str, target: str) -> None:
    """Child-process side of :func:`openvino_convert`: trace the model (two texts of different
    lengths, so that padding is traced; batch and token axes dynamic) and save it with fp32 weights
    (the CPU plugin picks bf16 or fp32 at compile time)."""
    import warnings

    warnings.filterwarnings("ignore")
    # The converter reports usage to Google Analytics through openvino-telemetry unless a consent
    # file says no; without the module it uses its built-in no-op stub. The product sends nothing.
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    import openvino as ov
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            h = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            return _pool(torch, h, attention_mask)

    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 1037, 2936, 6251, 102]])
    dyn = ov.PartialShape([-1, -1])
    converted = ov.convert_model(Pooled(model),
                                 example_input={"input_ids": ids, "attention_mask": (ids != 0).long()},
                                 input=[("input_ids", dyn, ov.Type.i64), ("attention_mask", dyn, ov.Type.i64)])
    out = Path(target)
    tmp = out / f"model.{os.getpid()}.tmp.xml"
    ov.save_model(converted, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), out / "model.bin")  # the weights first: model.xml marks it done
    os.replace(tmp, out / "model.xml")


def _export(model_dir: str, target: str) -> None:
    """Child-process side of :func:`onnx_export`: the fp32 graph with attention and layer norms fused
    by ONNX Runtime's BERT optimizer (exported from eager attention, the pattern it recognises: 1.3x
    the unfused int8 graph per core), then its int8 (per-channel weights) version."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from transformers import AutoModel

    out = Path(target)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            return _pool(torch, h, attention_mask)

    # Two texts of different lengths, so that padding is traced; batch and sequence axes dynamic.
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 1037, 2936, 6251, 102]])
    mask = (ids != 0).long()
    tmp32 = out / f"model.onnx.{os.getpid()}.tmp"
    torch.onnx.export(Pooled(model), (ids, mask, torch.zeros_like(ids)), str(tmp32), input_names=list(_INPUTS),
                      output_names=["embedding"], opset_version=17, dynamo=False,
                      dynamic_axes={**{k: {0: "batch", 1: "tokens"} for k in _INPUTS}, "embedding": {0: "batch"}})
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]
    from onnxruntime.transformers.optimizer import optimize_model  # type: ignore[import-untyped]

    cfg = model.config
    fused = optimize_model(str(tmp32), model_type="bert", num_heads=int(cfg.num_attention_heads), hidden_size=int(cfg.hidden_size))
    fused.save_model_to_file(str(tmp32))
    tmp8 = out / f"model.int8.onnx.{os.getpid()}.tmp"
    quantize_dynamic(str(tmp32), str(tmp8), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    os.replace(tmp8, out / "model.int8.onnx")
    os.replace(tmp32, out / "model.onnx")


_CACHE: dict[tuple[Any, ...], TextEncoder] = {}
_CACHE_LOCK = threading.Lock()


def get_encoder(settings: Settings) -> TextEncoder:
    """The process-wide encoder for these settings (loaded on first use, then reused)."""
    key = (settings.encoder_dir, settings.torch_threads, settings.quantize_encoder, settings.encoder_backend,
           settings.encoder_max_tokens, settings.encoder_batch_tokens, settings.encoder_device, settings.encoder_cache_dir)
    with _CACHE_LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = _CACHE[key] = TextEncoder.from_settings(settings)
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
    def from_settings(cls, settings: Settings, encode_fn: EncodeFn | None = None, **kw: Any) -> MicroBatcher:
        fn = encode_fn if encode_fn is not None else get_encoder(settings).encode
        return cls(fn, max_batch_size=settings.encode_batch_size, max_wait_ms=settings.encode_max_wait_ms, **kw)

    def submit(self, text: str) -> Future[np.ndarray]:
        """Queue one text; the future resolves to its embedding (float32 ``[dim]``)."""
        if self._closed:
            raise RecoError("micro-batcher is closed")
        fut: Future[np.ndarray] = Future()
        self._queue.put((text, fut))
        return fut

    def submit_many(self, texts: Sequence[str]) -> list[Future[np.ndarray]]:
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
        for (_, fut), row in zip(batch, emb, strict=True):
            fut.set_result(row)


_COMMANDS = {"export": _export, "convert-openvino": _convert_openvino}

if __name__ == "__main__":  # python -m streamproc.encoder export|convert-openvino MODEL_DIR TARGET_DIR (the caches' child processes)
    if len(sys.argv) != 4 or sys.argv[1] not in _COMMANDS:
        sys.exit("usage: python -m streamproc.encoder export|convert-openvino MODEL_DIR TARGET_DIR")
    _COMMANDS[sys.argv[1]](sys.argv[2], sys.argv[3])
