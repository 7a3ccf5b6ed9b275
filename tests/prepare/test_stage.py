"""Chunking and the prepared directory, checked against hand-worked values and against an
independent, literal re-statement of the original tool (Biopython records + list-repetition
overlaps + a per-codon dict translator)."""

from __future__ import annotations

import gzip
import io
import random
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from Bio import SeqIO
from Bio.Data.CodonTable import standard_dna_table
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.prepare.stage as prepare_module
from pipeline.core.errors import ConfigError, InputError
from pipeline.prepare.stage import PreparedPaths, chunk_bounds, chunk_sequence, prepare

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.fa"

# ---------------------------------------------------------------- oracle (original semantics)
CODONS = dict(standard_dna_table.forward_table)
CODONS.update({stop: "*" for stop in standard_dna_table.stop_codons})
SWAP = {"A": "T", "T": "A", "C": "G", "G": "C", "a": "t", "t": "a", "c": "g", "g": "c"}


def oracle_bounds(length: int, size: int) -> list[tuple[int, int]]:
    n = -(-length // size)
    surplus = n * size - length
    lo = int(surplus / n)
    need = surplus - lo * (n - 1)
    overlaps = [lo + 1] * need + [lo] * (n - 1 - need) + [0]
    bounds, moved = [], 0
    for a, b in zip(range(0, length, size), overlaps):
        start = a - moved
        bounds.append((start, min(start + size, length)))
        moved += b
    return bounds


def oracle_frames(seq: str) -> list[tuple[str, str, str]]:
    rc = "".join(SWAP.get(x, x) for x in reversed(seq))
    out = []
    for label, strand in (("F", seq), ("R", rc)):
        for f in (1, 2, 3):
            protein = "".join(CODONS.get(strand[i : i + 3], "") for i in range(f - 1, len(strand) - 2, 3))
            if protein and "*" not in protein:
                out.append((f"{label}{f}", strand[f - 1 : f + 3 * len(protein)], protein))
    return out


def oracle_prepare(path: Path, size: int) -> tuple[str, str, str]:
    """chunked.fa, nucleotide.fa, protein.faa text as the original writes them."""
    chunked = io.StringIO()
    for record in SeqIO.parse(str(path), "fasta"):
        for k, (a, b) in enumerate(oracle_bounds(len(record.seq), size), start=1):
            piece = record[a:b]
            piece.id = f"{record.id}_chunk_{k}"
            piece.description = ""
            SeqIO.write(piece, chunked, "fasta")
    nucleotide, protein = [], []
    for record in SeqIO.parse(io.StringIO(chunked.getvalue()), "fasta"):
        for label, nuc, prot in oracle_frames(str(record.seq).upper()):
            nucleotide.append(f">{record.id}{label}\n{nuc}\n")
            protein.append(f">{record.id}{label}\n{prot}\n")
    return chunked.getvalue(), "".join(nucleotide), "".join(protein)


def synthetic_fasta(path: Path, n: int, seed: int) -> Path:
    """Records with open reading frames on both strands, N runs, IUPAC codes and lowercase."""
    rng = random.Random(seed)
    sense = [c for c, aa in CODONS.items() if aa != "*"]
    lines = []
    for i in range(n):
        length = rng.choice(
            [1, 2, 3, 7, 299, 300, 301, 499, 500, 501, 600, 999, 1000, 1001, rng.randint(1, 2500)]
        )
        seq = "".join(rng.choice(sense) for _ in range(length // 3 + 1))[:length]
        if rng.random() < 0.5:
            seq = "".join(SWAP[x] for x in reversed(seq))
        seq = list(seq)
        for _ in range(rng.randint(0, 3)):
            seq[rng.randrange(length)] = rng.choice("NRYKMSWBDHVU")
        if rng.random() < 0.3:
            a = rng.randrange(length)
            seq[a : a + 50] = [x.lower() for x in seq[a : a + 50]]
        lines.append(f">rec{i} description {i}")
        text = "".join(seq)
        lines.extend(text[j : j + 70] for j in range(0, length, 70))
    path.write_text("\n".join(lines) + "\n")
    return path


def read_outputs(paths: PreparedPaths) -> tuple[str, str, str]:
    return paths.chunked.read_text(), paths.nucleotide.read_text(), paths.protein.read_text()


# ---------------------------------------------------------------- chunk bounds
@pytest.mark.parametrize(
    ("length", "size", "expected"),
    [
        (1, 500, [(0, 1)]),
        (499, 500, [(0, 499)]),
        (500, 500, [(0, 500)]),
        (501, 500, [(0, 500), (250, 501)]),
        (600, 500, [(0, 500), (299, 600)]),
        (1000, 500, [(0, 500), (500, 1000)]),
        (1500, 500, [(0, 500), (500, 1000), (1000, 1500)]),
        (1001, 500, [(0, 500), (333, 833), (666, 1001)]),
        (47, 10, [(0, 10), (9, 19), (18, 28), (27, 37), (37, 47)]),
    ],
)
def test_chunk_bounds_hand_worked(length: int, size: int, expected: list[tuple[int, int]]) -> None:
    # 501/500: n=2, R=499, lo=249, need=250: overlaps [250]*250 + [] + [0]; chunk 2 starts at 250
    # 600/500: n=2, R=400, lo=200, need=200: first overlap 201 -> chunk 2 starts at 299
    # 1001/500: n=3, R=499, lo=166, need=167: overlaps start 167, 167 -> starts 333, 666
    # 47/10: n=5, R=3, lo=0, need=3: overlaps [1, 1, 1, 0, 0] -> starts 0, 9, 18, 27, 37
    assert chunk_bounds(length, size) == expected


def test_chunk_sequence_keeps_case_and_content() -> None:
    seq = "acgtACGTNN" * 61  # 610
    chunks = chunk_sequence(seq, 500)
    # n=2, R=390, lo=195, need=195: first overlap 196 -> chunk 2 = [304, 610)
    assert chunks == [seq[0:500], seq[304:610]]


def test_chunk_size_too_small_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        prepare(DEMO, tmp_path / "out", chunk_size=2)
    assert not (tmp_path / "out").exists()


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=1, max_value=20000), st.integers(min_value=3, max_value=1200))
def test_chunks_cover_the_sequence_in_order(length: int, size: int) -> None:
    bounds = chunk_bounds(length, size)
    assert bounds == oracle_bounds(length, size)
    assert len(bounds) == -(-length // size)
    assert bounds[0][0] == 0
    assert bounds[-1][1] == length
    for (a0, b0), (a1, _) in zip(bounds, bounds[1:]):
        assert a0 < a1 <= b0  # in order, no gap between neighbours
        assert b0 - a0 == size  # every chunk but the last is full
    assert all(0 < b - a <= size for a, b in bounds)


# ---------------------------------------------------------------- the prepared directory
@pytest.mark.parametrize("size", [500, 300])
def test_demo_matches_original(tmp_path: Path, size: int) -> None:
    paths = prepare(DEMO, tmp_path / "out", chunk_size=size)
    assert read_outputs(paths) == oracle_prepare(DEMO, size)
    assert paths.stats.frames > 10  # the demo is built to have kept frames on both strands
    protein = paths.protein.read_text()
    assert "F1\n" in protein or "F2\n" in protein or "F3\n" in protein
    assert "R1\n" in protein or "R2\n" in protein or "R3\n" in protein


@pytest.mark.parametrize(("seed", "size"), [(1, 500), (2, 300), (3, 7), (4, 3)])
def test_synthetic_matches_original(tmp_path: Path, seed: int, size: int) -> None:
    src = synthetic_fasta(tmp_path / "in.fa", 40, seed)
    paths = prepare(src, tmp_path / "out", chunk_size=size)
    assert read_outputs(paths) == oracle_prepare(src, size)


def test_small_batches_give_identical_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = synthetic_fasta(tmp_path / "in.fa", 30, 5)
    whole = read_outputs(prepare(src, tmp_path / "a", chunk_size=300))
    monkeypatch.setattr(prepare_module, "BATCH_BASES", 97)  # flushes inside long records too
    split = prepare(src, tmp_path / "b", chunk_size=300)
    assert read_outputs(split) == whole
    assert pq.read_table(split.frames).equals(pq.read_table(tmp_path / "a" / "frames.parquet"))


def test_frames_index(tmp_path: Path) -> None:
    paths = prepare(DEMO, tmp_path / "out", chunk_size=500)
    table = pq.read_table(paths.frames).to_pylist()
    proteins = list(SeqIO.parse(paths.protein, "fasta"))
    nucleotides = list(SeqIO.parse(paths.nucleotide, "fasta"))
    record_ids = {r.id for r in SeqIO.parse(DEMO, "fasta")}
    assert [row["id"] for row in table] == [r.id for r in proteins] == [r.id for r in nucleotides]
    for row, prot, nuc in zip(table, proteins, nucleotides):
        assert row["aa_length"] == len(prot.seq)
        assert row["nt_length"] == len(nuc.seq)
        assert row["id"] == row["chunk_id"] + row["frame"]
        assert row["frame"] in {"F1", "F2", "F3", "R1", "R2", "R3"}
        assert row["chunk_id"].startswith(row["record_id"] + "_chunk_")
        assert row["record_id"] in record_ids
    assert paths.stats.frames == len(table)


def test_stats(tmp_path: Path) -> None:
    src = tmp_path / "in.fa"
    src.write_text(">a x\n" + "ATG" * 200 + "\n>b\nTTT\n")  # 600 bp -> 2 chunks; 3 bp -> 1 chunk
    started = time.perf_counter()
    paths = prepare(src, tmp_path / "out", chunk_size=500)
    wall = time.perf_counter() - started
    s = paths.stats
    assert (s.records, s.bases, s.chunks) == (2, 603, 3)
    # a_chunk_1 = (ATG)x166 + AT: F1 MMM.., F2 TGA.. stop, F3 GAT.. DDD; reverse AT + (CAT)x166:
    #   R1 ATC.. III, R2 TCA.. SSS, R3 CAT.. HHH
    # a_chunk_2 = [299, 600) = G + (ATG)x100: F1 GAT.. DDD, F2 ATG.. MMM, F3 TGA stop; reverse
    #   (CAT)x100 + C: R1 HHH, R2 III, R3 SSS
    # b_chunk_1 = TTT: F1 F, R1 AAA K
    ids = [line[1:] for line in paths.protein.read_text().splitlines()[::2]]
    assert ids == [
        "a_chunk_1F1",
        "a_chunk_1F3",
        "a_chunk_1R1",
        "a_chunk_1R2",
        "a_chunk_1R3",
        "a_chunk_2F1",
        "a_chunk_2F2",
        "a_chunk_2R1",
        "a_chunk_2R2",
        "a_chunk_2R3",
        "b_chunk_1F1",
        "b_chunk_1R1",
    ]
    assert s.frames == 12
    assert paths.protein.read_text().splitlines()[-3:] == ["F", ">b_chunk_1R1", "K"]
    assert 0 < s.seconds <= wall  # the call's own duration (not a timestamp, not milliseconds)


def test_gzip_input_gives_same_output(tmp_path: Path) -> None:
    gz = tmp_path / "demo.fa.gz"
    gz.write_bytes(gzip.compress(DEMO.read_bytes()))
    assert read_outputs(prepare(gz, tmp_path / "z")) == read_outputs(prepare(DEMO, tmp_path / "p"))


def test_locate(tmp_path: Path) -> None:
    made = prepare(DEMO, tmp_path / "out")
    found = PreparedPaths.locate(tmp_path / "out")
    assert found == made
    assert found.stats is None
    made.nucleotide.unlink()
    with pytest.raises(InputError, match="nucleotide.fa"):
        PreparedPaths.locate(tmp_path / "out")


def test_bad_input_publishes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.fa"
    src.write_text(">ok\n" + "ACGT" * 2000 + "\n>bad\nACGX\n")
    with pytest.raises(InputError, match="'bad'"):
        prepare(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "old"
    prepare(DEMO, existing)
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    with pytest.raises(InputError):
        prepare(src, existing)
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before  # no temp files left either
