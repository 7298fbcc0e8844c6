"""Feature cache: hits return identical arrays, a changed file or extractor misses, no pickle, atomic files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from egmf_core.data import resolve_data_dir
from egmf_core.features import CACHE_DIR_ENV, ExtractorId, FeatureCache
from egmf_core.features.cache import default_cache_dir

EXTRACTOR = ExtractorId("test-extractor", 1, {"fps": 10.0, "model": "x"})


@pytest.fixture()
def media(tmp_path):
    path = tmp_path / "clip.flac"
    shutil.copyfile(resolve_data_dir() / "ravdess/Actor_02/03-01-03-01-01-01-02.flac", path)
    return path


@pytest.fixture()
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def _counting_compute(calls: list[int]):
    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        rng = np.random.default_rng(len(calls))
        return {"states": rng.standard_normal((7, 3)).astype(np.float32), "valid": np.array([True, False])}

    return compute


def test_hit_returns_identical_arrays(cache: FeatureCache, media) -> None:
    calls: list[int] = []
    first = cache.get_or_compute(media, EXTRACTOR, _counting_compute(calls))
    second = cache.get_or_compute(media, EXTRACTOR, _counting_compute(calls))
    assert len(calls) == 1
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        assert first[name].dtype == second[name].dtype
    assert not list(cache.root.rglob(".tmp-*"))  # atomic write left no temporary file


def test_changed_file_or_extractor_misses(cache: FeatureCache, media) -> None:
    calls: list[int] = []
    cache.get_or_compute(media, EXTRACTOR, _counting_compute(calls))
    assert cache.get(media, ExtractorId("test-extractor", 2, EXTRACTOR.config)) is None
    assert cache.get(media, ExtractorId("test-extractor", 1, {"fps": 5.0, "model": "x"})) is None
    with media.open("ab") as handle:
        handle.write(b"\0")
    assert cache.get(media, EXTRACTOR) is None
    cache.get_or_compute(media, EXTRACTOR, _counting_compute(calls))
    assert len(calls) == 2
    stat = media.stat()
    os.utime(media, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same size, new mtime
    assert cache.get(media, EXTRACTOR) is None


def test_corrupt_entry_is_a_miss(cache: FeatureCache, media) -> None:
    calls: list[int] = []
    cache.get_or_compute(media, EXTRACTOR, _counting_compute(calls))
    cache.path_for(media, EXTRACTOR).write_bytes(b"not an npz")
    assert cache.get(media, EXTRACTOR) is None
    cache.get_or_compute(media, EXTRACTOR, _counting_compute(calls))
    assert len(calls) == 2 and cache.get(media, EXTRACTOR) is not None


def test_object_arrays_are_refused(cache: FeatureCache, media) -> None:
    with pytest.raises(ValueError, match="object"):
        cache.put(media, EXTRACTOR, {"bad": np.array([{"a": 1}], dtype=object)})


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "egmf"))
    assert default_cache_dir() == tmp_path / "egmf" / "features"
    assert FeatureCache().root == (tmp_path / "egmf" / "features").resolve()
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "egmf" / "features"
    with pytest.raises(ValueError, match="read-only"):
        FeatureCache(resolve_data_dir() / "cache")



@pytest.mark.parametrize("layout", ["symlink", "folder"])
def test_shared_folder_refused_through_a_symlink_or_a_plain_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path, layout: str
) -> None:
    """`<repo>/../shared` may be a symbolic link (to a folder elsewhere) or a plain folder: a cache root inside it is
    refused whichever spelling names it (through the link, the link's target, a link to a folder inside it), and a
    root outside it is accepted."""
    from egmf_core.features import cache as cache_module

    checkout = tmp_path / "work"
    repo = checkout / "main"
    repo.mkdir(parents=True)
    if layout == "symlink":
        target = tmp_path / "elsewhere" / "shared-store"
        (target / "data").mkdir(parents=True)
        (checkout / "shared").symlink_to(target, target_is_directory=True)
        assert (checkout / "shared").is_symlink() and (checkout / "shared").resolve() == target.resolve()
    else:
        target = checkout / "shared"
        (target / "data").mkdir(parents=True)
        assert not target.is_symlink()
    monkeypatch.setattr(cache_module, "REPO_ROOT", repo)
    assert cache_module.shared_dir() == target.resolve()

    link_inside = tmp_path / "cache-link"  # a cache root that is itself a link into the shared folder
    link_inside.symlink_to(target / "data", target_is_directory=True)
    refused = [
        repo / ".." / "shared",
        repo / ".." / "shared" / "data" / "cache",  # as resolve_data_dir's default spells it, unresolved
        checkout / "shared" / "cache",
        target,
        target / "data" / "cache",
        link_inside,
        link_inside / "features",
    ]
    for root in refused:
        with pytest.raises(ValueError, match="read-only"):
            FeatureCache(root)
    for root in (checkout / "cache", repo / "cache", checkout / "shared-not" / "cache", tmp_path / "elsewhere"):
        assert FeatureCache(root).root == root.resolve()
