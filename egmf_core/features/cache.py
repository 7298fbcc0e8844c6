"""On-disk cache of per-file feature arrays, so training and evaluation extract each clip once.

Key: the file's absolute path, size and modification time (a changed file is a new key) plus the extractor's name,
version and a hash of its configuration/model identity (a new model or setting is a new key). Entries are `.npz`
files of plain numeric/bool arrays, read with `allow_pickle=False`, so a cache file can never execute code. Writes go
to a temporary file in the same folder and are renamed into place, so a crash or a concurrent reader never sees a
half-written entry. Location: `$EGMF_CACHE_DIR/features`, default `~/.cache/egmf/features`; never the shared data
folder (it is read-only in CI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "EGMF_CACHE_DIR"

#: The checkout's root; the read-only shared folder is its sibling `shared` (a folder or a symbolic link to one).
REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The read-only shared folder `<repo root>/../shared`, resolved: a symbolic link is followed to its target, so
    it compares equal to any resolved path inside it."""
    return (REPO_ROOT.parent / "shared").resolve()


def default_cache_dir() -> Path:
    """`$EGMF_CACHE_DIR/features`, or `~/.cache/egmf/features`."""
    base = os.environ.get(CACHE_DIR_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "egmf").expanduser() / "features"


@dataclass(frozen=True)
class ExtractorId:
    """Names an extractor's output: bump `version` when the computation changes; `config` holds everything else
    that changes the arrays (config dataclass fields, model file identity). Must be JSON-serializable."""

    name: str
    version: int
    config: Mapping[str, object] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, extractor: object) -> ExtractorId:
        """From an extractor exposing `extractor_name`, `extractor_version` and `cache_identity` (the settings and
        model identity its arrays depend on), e.g. `WhisperFrontend`, `FaceFeatureExtractor`."""
        return cls(
            extractor.extractor_name,  # type: ignore[attr-defined]
            extractor.extractor_version,  # type: ignore[attr-defined]
            dict(extractor.cache_identity),  # type: ignore[attr-defined]
        )

    @property
    def digest(self) -> str:
        payload = json.dumps({"name": self.name, "version": self.version, "config": self.config}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class FeatureCache:
    """`get`/`put`/`get_or_compute` of named arrays per (media file, extractor)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = (Path(root) if root is not None else default_cache_dir()).expanduser().resolve()
        shared = shared_dir()  # both sides resolved: `../shared` may be a symbolic link
        if self.root == shared or shared in self.root.parents:
            raise ValueError(f"feature cache root {self.root} is inside the read-only shared folder {shared}")

    def path_for(self, media_path: str | os.PathLike[str], extractor: ExtractorId) -> Path:
        """Where the entry for this file version and extractor lives (it may not exist yet)."""
        media = Path(media_path).resolve()
        stat = media.stat()
        key = json.dumps([str(media), stat.st_size, stat.st_mtime_ns, extractor.digest])
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        return self.root / f"{extractor.name}-v{extractor.version}" / digest[:2] / f"{digest}.npz"

    def get(self, media_path: str | os.PathLike[str], extractor: ExtractorId) -> dict[str, np.ndarray] | None:
        """The cached arrays, or `None` on a miss. An unreadable entry counts as a miss (and is recomputed)."""
        entry = self.path_for(media_path, extractor)
        try:
            with np.load(entry, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable feature cache entry %s: %s", entry, exc)
            return None

    def put(
        self, media_path: str | os.PathLike[str], extractor: ExtractorId, arrays: Mapping[str, np.ndarray]
    ) -> Path:
        """Store `arrays` atomically; object arrays are refused because they would need pickle to load."""
        for name, array in arrays.items():
            if np.asarray(array).dtype == object:
                raise ValueError(f"feature cache: array {name!r} has dtype object; only plain arrays can be stored")
        entry = self.path_for(media_path, extractor)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **{name: np.asarray(array) for name, array in arrays.items()})
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return entry

    def get_or_compute(
        self,
        media_path: str | os.PathLike[str],
        extractor: ExtractorId,
        compute: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Cached arrays if present, else `compute()`, stored, then returned."""
        cached = self.get(media_path, extractor)
        if cached is not None:
            return cached
        arrays = {name: np.asarray(array) for name, array in compute().items()}
        self.put(media_path, extractor, arrays)
        log.debug("cached %s for %s", extractor.name, media_path)
        return arrays
