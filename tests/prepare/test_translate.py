"""Six-frame translation against hand-worked examples and two independent oracles:
a per-codon dict translator written here (built from Biopython's codon table) and
Biopython's ``Seq.translate`` on pure-ACGT sequences."""

from __future__ import annotations

import numpy as np
from Bio.Data.CodonTable import standard_dna_table
from Bio.Seq import Seq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.prepare.translate import (
    STANDARD_CODE,
    Frame,
    reverse_complement,
    six_frames,
    translate_both_strands,
)

CODONS = dict(standard_dna_table.forward_table)
CODONS.update({stop: "*" for stop in standard_dna_table.stop_codons})
SWAP = {"A": "T", "T": "A", "C": "G", "G": "C"}


def naive_revcomp(seq: str) -> str:
    return "".join(SWAP.get(base, base) for base in reversed(seq))


def naive_six_frames(chunk: str) -> list[tuple[str, str, str]]:
    """Straightforward statement of the original rules, one codon at a time."""
    seq = chunk.upper()
    out = []
    for label, strand in (("F", seq), ("R", naive_revcomp(seq))):
        for f in (1, 2, 3):
            protein = ""
            i = f - 1
            while i + 3 <= len(strand):
                protein += CODONS.get(strand[i : i + 3], "")
                i += 3
            if protein and "*" not in protein:
                out.append((f"{label}{f}", strand[f - 1 : f + 3 * len(protein)], protein))
    return out


def test_code_table_is_the_standard_code() -> None:
    bases = "TCAG"
    ours = {
        a + b + c: STANDARD_CODE[16 * i + 4 * j + k]
        for i, a in enumerate(bases)
        for j, b in enumerate(bases)
        for k, c in enumerate(bases)
    }
    assert ours == CODONS
    assert len(CODONS) == 64


def test_reverse_complement_swaps_only_acgt() -> None:
    assert reverse_complement(b"AACGTN") == b"NACGTT"
    assert reverse_complement(b"ARYKMSWBDHVU") == b"UVHDBWSMKYRT"
    assert reverse_complement(b"acgt") == b"acgt"


def test_hand_worked_forward_orf() -> None:
    # ATG GCC TGA: F1 has a stop; F2 = TGG CCT GA -> W P; F3 = GGC CTG A -> G L
    # reverse complement TCAGGCCAT: R1 TCA GGC CAT -> S G H; R2 CAG GCC AT -> Q A; R3 AGG CCA T -> R P
    # nucleotides: strand[f-1 : f + 3*len(protein)], i.e. one base past the codons, cut at the end
    assert six_frames("ATGGCCTGA") == [
        Frame("F2", "TGGCCTG", "WP"),
        Frame("F3", "GGCCTGA", "GL"),
        Frame("R1", "TCAGGCCAT", "SGH"),
        Frame("R2", "CAGGCCA", "QA"),
        Frame("R3", "AGGCCAT", "RP"),
    ]


def test_orf_on_reverse_strand_only() -> None:
    # forward TTATTATTA: F1 TTA TTA TTA -> LLL, F2 TAT TAT TA -> YY, F3 ATT ATT A -> II;
    # reverse TAATAATAA: R1 starts with a stop, R2 AAT AAT AA -> NN, R3 ATA ATA A -> II.
    assert six_frames("TTATTATTA") == [
        Frame("F1", "TTATTATTA", "LLL"),
        Frame("F2", "TATTATT", "YY"),
        Frame("F3", "ATTATTA", "II"),
        Frame("R2", "AATAATA", "NN"),
        Frame("R3", "ATAATAA", "II"),
    ]
    # every forward frame has a stop (TGA at 0 in F1, at 4 in F2, at 8 in F3);
    # reverse complement GTCAGTCAGTCA: R1 GTC AGT CAG TCA -> VSQS, R2 TCA GTC AGT CA -> SVS,
    # R3 CAG TCA GTC A -> QSV
    assert six_frames("TGACTGACTGAC") == [
        Frame("R1", "GTCAGTCAGTCA", "VSQS"),
        Frame("R2", "TCAGTCAGTC", "SVS"),
        Frame("R3", "CAGTCAGTCA", "QSV"),
    ]
    # F1 TCA TCA TCA -> SSS, F2 CAT CAT C -> HH, F3 ATC ATC A -> II; reverse TGATGATGA:
    # R1 starts with a stop, R2 GAT GAT GA -> DD, R3 ATG ATG A -> MM
    seq = "TCATCATCA"  # F1 TCA TCA TCA -> SSS; reverse TGATGATGA: R1 stops, R2 GAT GAT GA -> DD
    assert six_frames(seq) == [
        Frame("F1", "TCATCATCA", "SSS"),
        Frame("F2", "CATCATC", "HH"),
        Frame("F3", "ATCATCA", "II"),
        Frame("R2", "GATGATG", "DD"),
        Frame("R3", "ATGATGA", "MM"),
    ]


def test_skipped_codons_shorten_the_nucleotide_slice() -> None:
    # F1: ATG NNN AAA -> M K (NNN skipped): nucleotide = seq[0 : 1 + 3*2] = "ATGNNNA"
    frames = six_frames("ATGNNNAAA")
    assert frames[0] == Frame("F1", "ATGNNNA", "MK")
    # all-ambiguous chunk: nothing translates, nothing kept
    assert six_frames("NNNNNNRYK") == []


def test_lowercase_is_uppercased() -> None:
    assert six_frames("atggcctga") == six_frames("ATGGCCTGA")


def test_short_chunks() -> None:
    assert six_frames("A") == []
    assert six_frames("AT") == []
    assert six_frames("ATG") == [Frame("F1", "ATG", "M"), Frame("R1", "CAT", "H")]
    assert six_frames("TAA") == [Frame("R1", "TTA", "L")]


def test_biopython_translate_agrees_on_pure_acgt() -> None:
    rng = np.random.default_rng(7)
    for length in (3, 10, 57, 150, 301):
        for _ in range(20):
            seq = "".join(rng.choice(list("ACGT"), size=length))
            ours = {f.frame: f.protein for f in six_frames(seq)}
            rc = str(Seq(seq).reverse_complement())
            for label, strand in (("F", seq), ("R", rc)):
                for f in (1, 2, 3):
                    sub = strand[f - 1 :]
                    protein = str(Seq(sub[: len(sub) // 3 * 3]).translate())
                    if protein and "*" not in protein:
                        assert ours.pop(f"{label}{f}") == protein
            assert ours == {}


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ACGTacgtNRYKMSWBDHVU", min_size=0, max_size=80))
def test_matches_naive_translator(chunk: str) -> None:
    assert [tuple(f) for f in six_frames(chunk)] == naive_six_frames(chunk)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ACGTN", min_size=1, max_size=40), min_size=1, max_size=8))
def test_batched_chunks_do_not_bleed_into_each_other(chunks: list[str]) -> None:
    buffer = "".join(chunks).encode()
    lengths = np.array([len(c) for c in chunks])
    ends = np.cumsum(lengths)
    starts = ends - lengths
    strands = translate_both_strands(buffer, starts, ends)
    for c, chunk in enumerate(chunks):
        got = []
        for s, strand in enumerate(strands):
            for f in range(3):
                if strand.kept[c, f]:
                    got.append(
                        (
                            ("F", "R")[s] + str(f + 1),
                            strand.nucleotide(c, f).decode(),
                            strand.protein(c, f).decode(),
                        )
                    )
        assert got == naive_six_frames(chunk)
