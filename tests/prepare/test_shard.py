"""write_shards: length-sorted stride sharding of a hand-written prepared directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures.prepared import seal_prepared

from pipeline.core.errors import ConfigError, InputError
from pipeline.prepare.shard import write_shards

PROTEINS = {"a_F1": "MKVLA", "a_R2": "MKVLAWQRST", "b_F1": "MKV", "b_F3": "QWERTYIPAS", "c_R1": "MKVLAWQ"}


def make_prepared(
    root: Path,
    proteins: dict[str, str] = PROTEINS,
    nucleotides: dict[str, str] | None = None,
    frame_ids: list[str] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    nucleotides = nucleotides if nucleotides is not None else {i: "ACG" * len(p) for i, p in proteins.items()}
    ids = frame_ids or list(proteins)
    pd.DataFrame(
        {
            "id": ids,
            "record_id": [i.split("_")[0] for i in ids],
            "chunk_id": ids,
            "frame": [i.split("_")[1] for i in ids],
            "nt_length": [3 * len(proteins.get(i, "")) for i in ids],
            "aa_length": [len(proteins.get(i, "")) for i in ids],
        }
    ).to_parquet(root / "frames.parquet")
    # wrapped lines and a description after the id, as FASTA writers produce
    (root / "protein.faa").write_text("".join(f">{i} frame\n{p[:4]}\n{p[4:]}\n" for i, p in proteins.items()))
    (root / "nucleotide.fa").write_text("".join(f">{i}\n{s}\n" for i, s in nucleotides.items()))
    return seal_prepared(root)


def test_stride_over_length_sorted_rows(tmp_path: Path) -> None:
    paths = write_shards(make_prepared(tmp_path / "prep"), 2, tmp_path / "shards")
    assert [p.name for p in paths] == ["shard-000.parquet", "shard-001.parquet"]
    # lengths 5, 10, 3, 10, 7 -> sorted (stable): a_R2, b_F3, c_R1, a_F1, b_F1 -> stride 2
    s0, s1 = (pd.read_parquet(p) for p in paths)
    assert list(s0.columns) == ["id", "nucleotide", "protein"]
    assert s0["id"].tolist() == ["a_R2", "c_R1", "b_F1"]
    assert s1["id"].tolist() == ["b_F3", "a_F1"]
    both = pd.concat([s0, s1])
    assert sorted(both["id"]) == sorted(PROTEINS)
    for _, row in both.iterrows():
        assert row["protein"] == PROTEINS[row["id"]]
        assert row["nucleotide"] == "ACG" * len(PROTEINS[row["id"]])


def test_more_shards_than_rows_gives_empty_shards(tmp_path: Path) -> None:
    paths = write_shards(make_prepared(tmp_path / "prep"), 7, tmp_path / "shards")
    sizes = [len(pd.read_parquet(p)) for p in paths]
    assert sizes == [1, 1, 1, 1, 1, 0, 0]


def test_bad_prepared_dirs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_shards=0"):
        write_shards(make_prepared(tmp_path / "p0"), 0, tmp_path / "s0")
    with pytest.raises(InputError, match="not a prepared directory: missing .*frames.parquet"):
        write_shards(tmp_path / "nothing", 1, tmp_path / "s1")
    prep = make_prepared(tmp_path / "p2", frame_ids=["a_F1", "a_R2", "b_F1", "c_R1", "b_F3"])
    with pytest.raises(InputError, match="does not match frames.parquet .* at row 3"):
        write_shards(prep, 1, tmp_path / "s2")
    nuc = {i: "ACG" for i in PROTEINS if i != "c_R1"}
    with pytest.raises(InputError, match="1 frame\\(s\\) have no record .* 'c_R1'"):
        write_shards(make_prepared(tmp_path / "p3", nucleotides=nuc), 1, tmp_path / "s3")
    prep = make_prepared(tmp_path / "p4")
    (prep / "nucleotide.fa").unlink()
    with pytest.raises(InputError, match="missing nucleotide.fa"):
        write_shards(prep, 1, tmp_path / "s4")
