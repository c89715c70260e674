"""Trainer checkpoints: model, replay buffer, detector and prequential state plus consumed offsets.

Layout of ``settings.checkpoint_dir``::

    ckpt-000000000007/           one checkpoint (the last ``keep`` = 2 are kept)
        meta.json                version, offsets, counts, and each component's JSON meta
        arrays.safetensors       every component's arrays, keys "<component>/<name>" (never pickle)
    learned_ids.log              append-only: the event id of every example learned, one per line,
                                 optionally followed by tab-separated tags (salted hashes of the
                                 example's user and item, so an erasure can remove its lines)

Writing is atomic: files go to a temporary directory, are fsynced, the directory is renamed to
its final name and the parent directory fsynced. A reader therefore sees either a whole
checkpoint or none; a damaged newest checkpoint falls back to the previous one.

Guarantee (at-least-once learning, bounded re-learning)
-------------------------------------------------------
The checkpoint's ``offsets`` are the source of truth for where learning resumes: a restarted (or
standby) trainer loads the newest checkpoint and seeks the examples topic to exactly those offsets,
so **no example is lost**. Examples learned after the newest checkpoint but before a crash are
learned again after the restart: at most ``checkpoint_interval_s`` seconds of examples (plus the
batch in flight), or a full interval more when the newest checkpoint was damaged and the previous
one is used. A clean shutdown (SIGTERM/SIGINT) checkpoints last, so nothing is re-learned.
Kafka's committed offsets are only a hint for lag monitoring.

The ids of learned examples are appended to ``learned_ids.log`` and fsynced *before* the
checkpoint that covers them is renamed into place, so every example covered by a checkpoint has
its id in the log (an id may appear twice when it was re-learned after a crash).

Erasure: ``save(erase_tags=...)`` first rewrites the log without the lines carrying any of those
tags (atomically: a fsynced copy renamed over it), and ``save(drop_older=True)`` removes every
older checkpoint once the new one is in place, so no file in the directory still holds an erased
id (see the README section "Erasure").

Examples
--------
>>> import tempfile, numpy as np
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> _ = store.save(version=4, offsets={"ex:0": 10},
...                components={"model": ({"k": 2}, {"w": np.ones((3, 2), np.float32)})},
...                learned_ids=["e1", "e2"])
>>> ck = store.latest()
>>> ck.version, ck.offsets, ck.components["model"][1]["w"].shape, store.learned_ids()
(4, {'ex:0': 10}, (3, 2), ['e1', 'e2'])
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.errors import RecoError

__all__ = ["Checkpoint", "CheckpointStore", "CheckpointError", "IDS_LOG"]

log = logging.getLogger(__name__)

IDS_LOG = "learned_ids.log"
_PREFIX = "ckpt-"
_FORMAT = 2  # 2: each component's meta as its state() returned it; 1 wrapped it as {"form": "pair"|"dict", "meta": ...}
_STALE_TMP_S = 300.0

State = tuple[dict[str, Any], dict[str, np.ndarray]]


class CheckpointError(RecoError):
    """A checkpoint could not be written or read."""


@dataclass
class Checkpoint:
    """One checkpoint as loaded from disk.

    ``components`` maps a name (``model``, ``drift``, ``prequential`` …) to its
    ``(meta, arrays)`` state; ``info`` holds the counts written with it.
    """

    seq: int
    version: int
    offsets: dict[str, int]
    components: dict[str, State]
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _unwrap_v1(m: Any) -> dict[str, Any]:
    """A format-1 component meta (``{"form": "pair"|"dict", "meta": state}``) as format 2 holds it:
    the component's own meta (a "dict" state had no arrays; ``from_state(meta, {})`` reads it)."""
    if not isinstance(m, dict) or m.get("form") not in ("pair", "dict") or not isinstance(m.get("meta"), dict):
        raise ValueError(f"format-1 component meta without form/meta: {str(m)[:80]}")
    return m["meta"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pack_arrays(components: dict[str, State]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Flatten component arrays to safetensors-able tensors; strings/records get a JSON side entry."""
    tensors: dict[str, np.ndarray] = {}
    special: dict[str, Any] = {}
    for comp, (_, arrays) in components.items():
        for name, arr in (arrays or {}).items():
            key = f"{comp}/{name}"
            arr = np.asarray(arr)
            if arr.dtype.names:  # structured records: one tensor per field
                special[key] = {"records": [[f, arr.dtype[f].str] for f in arr.dtype.names]}
                for f in arr.dtype.names:
                    tensors[f"{key}#{f}"] = np.ascontiguousarray(arr[f])
            elif arr.dtype.kind in "OUS":  # strings: safetensors holds numbers only
                special[key] = {"strings": [str(x) for x in arr.ravel().tolist()], "shape": list(arr.shape)}
            else:
                tensors[key] = np.ascontiguousarray(arr)
    return tensors, special


def _unpack_arrays(tensors: dict[str, np.ndarray], special: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        if "#" in key.split("/", 1)[1]:
            continue
        comp, name = key.split("/", 1)
        out.setdefault(comp, {})[name] = arr
    for key, spec in special.items():
        comp, name = key.split("/", 1)
        if "records" in spec:
            dtype = np.dtype([(f, d) for f, d in spec["records"]])
            first = tensors[f"{key}#{spec['records'][0][0]}"] if spec["records"] else np.empty(0)
            rec = np.empty(len(first), dtype)
            for f, _ in spec["records"]:
                rec[f] = tensors[f"{key}#{f}"]
            out.setdefault(comp, {})[name] = rec
        else:
            out.setdefault(comp, {})[name] = np.array(spec["strings"], dtype=object if not spec["strings"] else None).reshape(spec["shape"])
    return out


class CheckpointStore:
    """Atomic checkpoints in ``directory``, keeping the newest ``keep``.

    Parameters
    ----------
    directory
        Checkpoint directory (created when missing).
    keep
        How many checkpoints to keep (at least 1; 2 leaves a fallback if the newest is damaged).
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep: must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f".tmp-{_PREFIX}*"):  # left by a crash mid-write
            try:
                if time.time() - stale.stat().st_mtime > _STALE_TMP_S:  # not another trainer writing now
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                continue

    # ------------------------------------------------------------------ listing
    def paths(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = []
        for p in self.directory.glob(f"{_PREFIX}*"):
            try:
                found.append((int(p.name[len(_PREFIX):]), p))
            except ValueError:
                continue
        return [p for _, p in sorted(found)]

    @property
    def ids_log(self) -> Path:
        return self.directory / IDS_LOG

    def learned_ids(self) -> list[str]:
        """Every id in ``learned_ids.log`` (duplicates kept), for accounting tests."""
        if not self.ids_log.exists():
            return []
        return [line.split("\t", 1)[0] for line in self.ids_log.read_text().splitlines() if line]

    def _erase_from_log(self, tags: set[str]) -> int:
        """Rewrite the id log without lines tagged with any of ``tags``; returns lines removed."""
        if not tags or not self.ids_log.exists():
            return 0
        kept, removed = [], 0
        with open(self.ids_log, encoding="utf-8") as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) > 1 and not tags.isdisjoint(fields[1:]):
                    removed += 1
                else:
                    kept.append(line)
        if not removed:
            return 0
        tmp = self.directory / f".tmp-{IDS_LOG}-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.ids_log)
        _fsync_dir(self.directory)
        return removed

    # ------------------------------------------------------------------ writing
    def save(
        self,
        *,
        version: int,
        offsets: dict[str, int],
        components: dict[str, State],
        info: dict[str, Any] | None = None,
        learned_ids: Iterable[str] = (),
        erase_tags: Iterable[str] = (),
        drop_older: bool = False,
    ) -> Checkpoint:
        """Append ``learned_ids`` to the id log (fsynced), then write one checkpoint atomically.

        ``erase_tags``: first remove the log lines carrying any of these tags. ``drop_older``:
        remove every older checkpoint after this one is in place (after an erasure).
        """
        try:
            self._erase_from_log(set(erase_tags))
        except OSError as exc:
            raise CheckpointError(f"erasing from {self.ids_log}: {exc}") from exc
        ids = list(learned_ids)
        if ids:
            with open(self.ids_log, "a", encoding="utf-8") as f:
                f.write("\n".join(ids) + "\n")
                f.flush()
                os.fsync(f.fileno())
        existing = self.paths()
        seq = (int(existing[-1].name[len(_PREFIX):]) + 1) if existing else 1
        tensors, special = _pack_arrays(components)
        meta: dict[str, Any] = {
            "format": _FORMAT,
            "seq": seq,
            "version": int(version),
            "offsets": {k: int(v) for k, v in offsets.items()},
            "created": time.time(),
            "info": info or {},
            "components": {name: m for name, (m, _) in components.items()},
            "special_arrays": special,
        }
        final = self.directory / f"{_PREFIX}{seq:012d}"
        tmp = self.directory / f".tmp-{_PREFIX}{seq:012d}-{os.getpid()}"
        try:
            tmp.mkdir()
            from safetensors.numpy import save_file

            save_file(tensors, str(tmp / "arrays.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(meta, default=_json_default, separators=(",", ":")))
            for name in ("arrays.safetensors", "meta.json"):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.directory)
        except (OSError, TypeError, ValueError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"writing checkpoint {final}: {exc}") from exc
        for old in self.paths()[: -1 if drop_older else -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return Checkpoint(seq, int(version), meta["offsets"], components, meta["info"], final)

    # ------------------------------------------------------------------ reading
    def load(self, path: Path) -> Checkpoint:
        """Read one checkpoint directory; raise :class:`CheckpointError` when damaged."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            meta = json.loads((path / "meta.json").read_text())
            fmt = meta.get("format")
            if fmt not in (1, _FORMAT):
                raise ValueError(f"unknown format {fmt!r}")
            tensors = load_file(str(path / "arrays.safetensors"))
            arrays = _unpack_arrays(tensors, meta.get("special_arrays", {}))
            comp_meta = meta["components"] if fmt == _FORMAT else {name: _unwrap_v1(m) for name, m in meta["components"].items()}
            components = {name: (m, arrays.get(name, {})) for name, m in comp_meta.items()}
            offsets = {str(k): int(v) for k, v in meta["offsets"].items()}
            return Checkpoint(int(meta["seq"]), int(meta["version"]), offsets, components, meta.get("info", {}), path)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise CheckpointError(f"checkpoint {path} is damaged: {exc}") from exc

    def latest(self) -> Checkpoint | None:
        """The newest readable checkpoint (falling back past damaged ones), or None."""
        for path in reversed(self.paths()):
            try:
                return self.load(path)
            except CheckpointError as exc:
                log.warning("%s; trying the previous checkpoint", exc)
        return None
