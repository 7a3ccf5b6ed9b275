"""Part files: atomic write, marker validation, memory-mapped multi-directory reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import InputError, OutputIntegrityError
from pipeline.embed.parts import (
    FORMAT,
    PartFiles,
    check_part,
    open_embeddings,
    part_indices,
    write_metadata,
    write_part,
)


def make_dir(path: Path, ids: list[str], vectors: np.ndarray, part_size: int, **meta) -> Path:
    path.mkdir(parents=True)
    n_parts = (len(ids) + part_size - 1) // part_size
    for p in range(n_parts):
        sl = slice(p * part_size, (p + 1) * part_size)
        write_part(path, p, ids[sl], vectors[sl], "fp")
    base = {
        "format": FORMAT,
        "kind": "esm2",
        "model": "m",
        "repr_layer": 6,
        "hidden_size": vectors.shape[1],
        "precision": "fp32",
        "dtype": "float32",
        "fingerprint": "fp",
        "n_rows": len(ids),
        "n_parts": n_parts,
        "complete": True,
    }
    base.update(meta)
    write_metadata(path, base)
    return path


def test_round_trip_over_two_directories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    v1, v2 = rng.standard_normal((7, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    ids1, ids2 = [f"a{i}" for i in range(7)], ["b0", "b1", "b2"]
    d1 = make_dir(tmp_path / "s0", ids1, v1, part_size=3)
    d2 = make_dir(tmp_path / "s1", ids2, v2, part_size=3)
    assert part_indices(d1) == [0, 1, 2]
    es = open_embeddings([d1, d2])
    assert es.ids.tolist() == ids1 + ids2
    assert es.vectors.shape == (10, 4) and len(es) == 10
    np.testing.assert_array_equal(np.asarray(es.vectors), np.concatenate([v1, v2]))
    np.testing.assert_array_equal(es.vectors[[9, 0, 4]], np.stack([v2[2], v1[0], v1[4]]))
    np.testing.assert_array_equal(es.vectors[-1], v2[2])
    np.testing.assert_array_equal(es.vectors[2:5], v1[2:5])
    np.testing.assert_array_equal(es.lookup(["b1", "a6"]), np.stack([v2[1], v1[6]]))
    assert es.row_of("a3") == 3
    with pytest.raises(KeyError, match="'zz'"):
        es.lookup(["zz"])
    assert es.metadata["kind"] == "esm2" and len(es.metadata["sources"]) == 2
    # parts are memory-mapped, not loaded
    assert all(isinstance(a, np.memmap) for a in es.vectors.arrays)


def test_marker_contents_and_check(tmp_path: Path) -> None:
    vec = np.arange(6, dtype=np.float32).reshape(2, 3)
    marker = write_part(tmp_path, 0, ["x", "y"], vec, "fp")
    on_disk = json.loads(PartFiles(tmp_path, 0).marker.read_text())
    assert on_disk == marker and marker["rows"] == 2 and marker["dim"] == 3
    assert len(marker["vectors"]["sha256"]) == 64
    assert check_part(tmp_path, 0, expected_ids=["x", "y"], dim=3, fingerprint="fp") is None
    assert (
        check_part(tmp_path, 0, expected_ids=["y", "x"]) == "ids differ from the rows this part should hold"
    )
    assert check_part(tmp_path, 0, dim=5) == "vectors are 3-d, expected 5-d"
    assert check_part(tmp_path, 0, fingerprint="other") == "marker was written for other input"
    assert check_part(tmp_path, 1) == "no completion marker"


def test_corruption_is_detected(tmp_path: Path) -> None:
    vec = np.ones((4, 2), dtype=np.float32)
    write_part(tmp_path, 0, list("abcd"), vec, "fp")
    files = PartFiles(tmp_path, 0)
    raw = bytearray(files.vectors.read_bytes())
    raw[-1] ^= 1
    files.vectors.write_bytes(bytes(raw))
    assert "checksum" in check_part(tmp_path, 0)
    assert check_part(tmp_path, 0, verify_checksums=False) is None  # same size: only the hash sees it
    files.vectors.write_bytes(bytes(raw[:-4]))
    assert "bytes, marker says" in check_part(tmp_path, 0)
    files.marker.write_text("{not json")
    assert check_part(tmp_path, 0).startswith("unreadable marker")


def test_open_refuses_incomplete_inconsistent_or_duplicate(tmp_path: Path) -> None:
    v = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(OutputIntegrityError, match="does not exist"):
        open_embeddings(tmp_path / "none")
    d = make_dir(tmp_path / "inc", ["a", "b"], v, 1, complete=False)
    with pytest.raises(OutputIntegrityError, match="incomplete"):
        open_embeddings(d)
    d = make_dir(tmp_path / "gap", ["a", "b"], v, 1)
    PartFiles(d, 1).marker.unlink()
    with pytest.raises(OutputIntegrityError, match="part 1 is not valid \\(no completion marker\\)"):
        open_embeddings(d)
    d1 = make_dir(tmp_path / "d1", ["a", "b"], v, 2)
    d2 = make_dir(tmp_path / "d2", ["c", "a"], v, 2)
    with pytest.raises(OutputIntegrityError, match="'a' appears more than once"):
        open_embeddings([d1, d2])
    d3 = make_dir(tmp_path / "d3", ["e", "f"], v, 2, model="other")
    with pytest.raises(OutputIntegrityError, match="different settings.*'model'"):
        open_embeddings([d1, d3])
    d4 = make_dir(tmp_path / "d4", ["g", "h"], v, 2, n_rows=3)
    with pytest.raises(OutputIntegrityError, match="parts hold 2 rows, metadata says 3"):
        open_embeddings(d4)
    (tmp_path / "nometa").mkdir()
    with pytest.raises(OutputIntegrityError, match="no metadata.json"):
        open_embeddings(tmp_path / "nometa")


def test_write_part_rejects_bad_rows(tmp_path: Path) -> None:
    with pytest.raises(OutputIntegrityError, match="2 ids but vectors of shape"):
        write_part(tmp_path, 0, ["a", "b"], np.zeros((3, 2), np.float32), "fp")
    with pytest.raises(InputError, match="line break"):
        write_part(tmp_path, 0, ["a\nb"], np.zeros((1, 2), np.float32), "fp")
    assert not list(tmp_path.iterdir())


def test_background_writer_writes_in_order_and_surfaces_a_failed_write():
    from pipeline.embed.parts import MAX_PENDING_WRITES, BackgroundWriter

    done: list[int] = []
    writer = BackgroundWriter()
    for p in range(MAX_PENDING_WRITES + 3):  # more than may queue: enqueue waits for the oldest
        writer.enqueue(p, done.append, p)
    writer.drain()
    assert done == list(range(MAX_PENDING_WRITES + 3)) == writer.written

    def disk_full(p: int) -> None:
        raise OSError(28, "No space left on device")

    writer.enqueue(99, disk_full, 99)
    with pytest.raises(OSError, match="No space left"):
        writer.drain()
    writer.close()
