"""cbir.fileio: the one atomic writer and the one hasher."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from cbir.fileio import atomic_path, file_sha256, sha256_bytes, write_bytes_atomic, write_json_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_the_target_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".keras" and temporary != target
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old file until the block ends
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == ["model.keras"]


def test_a_failed_write_leaves_the_target_untouched_and_no_temporary_file(tmp_path):
    target = tmp_path / "vectors.faiss"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == ["vectors.faiss"]


def test_a_library_that_wrote_nothing_is_an_error_not_an_empty_file(tmp_path):
    with pytest.raises(OSError, match="nothing was written"):
        with atomic_path(tmp_path / "loss.png"):
            pass
    assert _leftovers(tmp_path) == []


def test_bytes_and_json_writers(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_json_atomic(tmp_path / "b.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert _leftovers(tmp_path) == ["a.bin", "b.json"]


def test_one_hash_for_bytes_and_files(tmp_path):
    data = os.urandom(3 << 20)  # several read blocks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def test_pca_state_is_written_atomically(tmp_path, monkeypatch):
    """PCA used to write its .npz in place: an interrupted save left a truncated file."""
    from cbir.features.pca import PCAReduction

    pca = PCAReduction(2).fit(np.random.default_rng(0).normal(size=(10, 4)))
    target = tmp_path / "pca.npz"
    target.write_bytes(b"previous state")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        pca.save(target)
    assert target.read_bytes() == b"previous state" and _leftovers(tmp_path) == ["pca.npz"]
