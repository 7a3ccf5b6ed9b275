"""Six-frame translation with the original tool's rules, vectorised over many chunks at once.

Rules (reproduced exactly, because the published classifiers were trained on their output):

- standard genetic code; ``TAA``, ``TAG``, ``TGA`` translate to ``*``;
- frames 1-3 read the (uppercased) chunk from offsets 0, 1, 2; frames R1-R3 read its reverse
  complement the same way. The reverse complement swaps only ``A<->T`` and ``C<->G``; every other
  letter (``N`` and the other IUPAC codes, ``U``) is kept as it is and only the order is reversed;
- a codon that contains anything but ``A``, ``C``, ``G``, ``T`` is skipped without a trace;
- a frame is kept when its translation is non-empty and has no ``*``;
- the nucleotide sequence written for frame ``f`` (1..3) is ``strand[f-1 : f + 3 * len(protein)]``:
  one base longer than the translated codons, and ``len(protein)`` counts translated codons only,
  so a frame with skipped codons gets a correspondingly shorter slice.

How it is fast: the chunks of a batch are concatenated into one buffer; every position of the
buffer gets a codon code (base-5 digits, 4 = not ACGT; ``bytes.translate`` and three numpy passes)
and an amino-acid byte (0 = skipped codon; one more ``bytes.translate``). Stops and skipped codons
are rare, so their positions are collected once and counted per (chunk, frame) with binary
searches. Python then only slices bytes (``codons[first:end:3]``) for the frames that are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

#: Standard genetic code, codons enumerated in TCAG order (first base slowest).
STANDARD_CODE = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
FRAME_LABELS = ("F1", "F2", "F3", "R1", "R2", "R3")
_STOP = ord("*")

# base -> digit: T C A G -> 0 1 2 3, anything else -> 4 (bytes.translate is much faster than a numpy lookup)
_BASE_DIGIT = bytes([{ord("T"): 0, ord("C"): 1, ord("A"): 2, ord("G"): 3}.get(i, 4) for i in range(256)])
_SKIP = 0


def _amino_acid_table() -> bytes:
    """Codon code ``c0*25 + c1*5 + c2`` (base 5, digit 4 = not ACGT) -> amino-acid byte, 0 = skipped."""
    table = bytearray(256)
    for i in range(4):
        for j in range(4):
            for k in range(4):
                table[i * 25 + j * 5 + k] = ord(STANDARD_CODE[i * 16 + j * 4 + k])
    return bytes(table)


_AA_BY_CODE = _amino_acid_table()

_COMPLEMENT = bytes.maketrans(b"ACGTacgt", b"TGCAtgca")


def reverse_complement(seq: bytes) -> bytes:
    """Reverse complement as the original tool computes it: only A/C/G/T (either case) are swapped.

    ``reverse_complement(b"AACGN")`` -> ``b"NCGTT"``; ``b"R"`` stays ``b"R"`` (Biopython would give Y).
    """
    return seq.translate(_COMPLEMENT)[::-1]


@dataclass(frozen=True)
class StrandFrames:
    """Three-frame translation of every chunk of one strand buffer.

    Attributes:
        buffer: the strand's bytes (uppercase); chunk ``c`` is ``buffer[starts[c]:ends[c]]``.
        codons: ``len(buffer) - 2`` bytes; ``codons[p]`` is the amino acid of the codon starting at
            ``p`` (``*`` for stops, ``\\x00`` for a codon with a base other than A/C/G/T).
        kept: ``(C, 3)`` bool, frame kept (non-empty, stop-free).
        first: ``(C, 3)`` int64, position of the frame's first codon in ``buffer``.
        n_codons: ``(C, 3)`` int64, complete codons in the frame (translated or skipped).
        n_aa: ``(C, 3)`` int64, translated codons (the protein length).
        nt_end: ``(C, 3)`` int64, the frame's nucleotides are ``buffer[first:nt_end]``.
    """

    buffer: bytes
    codons: bytes
    kept: np.ndarray
    first: np.ndarray
    n_codons: np.ndarray
    n_aa: np.ndarray
    nt_end: np.ndarray

    def protein(self, c: int, f: int) -> bytes:
        """The protein of chunk ``c``, frame ``f`` (0..2), skipped codons removed."""
        p = int(self.first[c, f])
        return self.protein_at(p, int(self.n_codons[c, f]), int(self.n_aa[c, f]))

    def protein_at(self, first: int, n_codons: int, n_aa: int) -> bytes:
        residues = self.codons[first : first + 3 * n_codons : 3]
        return residues if n_aa == n_codons else residues.replace(b"\x00", b"")

    def nucleotide(self, c: int, f: int) -> bytes:
        return self.buffer[int(self.first[c, f]) : int(self.nt_end[c, f])]


def _count_in_frames(
    positions: np.ndarray, first: np.ndarray, n_codons: np.ndarray, length: int
) -> np.ndarray:
    """How many of ``positions`` lie on a frame's codons ``first + 3*i``, ``i < n_codons``.

    ``positions`` are codon starts in ``[0, length)``. They are keyed by (position mod 3,
    position // 3) so that each frame is one contiguous key range, counted with two binary searches.
    """
    if positions.size == 0:
        return np.zeros(first.shape, dtype=np.int64)
    span = length // 3 + 2  # > the largest position // 3 + 1: a frame never spills into the next class
    residue = positions % 3
    # positions are ascending, so each residue class is too: concatenating the classes sorts the keys
    keys = np.concatenate([positions[residue == r] // 3 + r * span for r in range(3)])
    lo = np.minimum(first // 3, span - 1) + (first % 3) * span
    return np.searchsorted(keys, lo + n_codons) - np.searchsorted(keys, lo)


def translate_strand(buffer: bytes, starts: np.ndarray, ends: np.ndarray) -> StrandFrames:
    """Translate frames 1-3 of every chunk ``buffer[starts[c]:ends[c]]``.

    Args:
        buffer: uppercase nucleotide bytes (chunks back to back; anything may lie between them).
        starts, ends: ``(C,)`` int64 chunk bounds in ``buffer``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    digits = np.frombuffer(buffer.translate(_BASE_DIGIT), dtype=np.uint8)
    if len(buffer) >= 3:
        code = digits[:-2] * np.uint8(25)
        code += digits[1:-1] * np.uint8(5)
        code += digits[2:]
        codons = code.tobytes().translate(_AA_BY_CODE)
    else:
        codons = b""
    aa = np.frombuffer(codons, dtype=np.uint8)
    first = starts[:, None] + np.arange(3, dtype=np.int64)[None, :]  # (C, 3)
    n_codons = np.maximum((ends[:, None] - first) // 3, 0)
    stops = _count_in_frames(np.flatnonzero(aa == _STOP), first, n_codons, len(codons))
    skipped = _count_in_frames(np.flatnonzero(aa == _SKIP), first, n_codons, len(codons))
    n_aa = n_codons - skipped
    kept = (stops == 0) & (n_aa > 0)
    nt_end = np.minimum(first + 1 + 3 * n_aa, ends[:, None])
    return StrandFrames(buffer, codons, kept, first, n_codons, n_aa, nt_end)


def translate_both_strands(
    buffer: bytes, starts: np.ndarray, ends: np.ndarray
) -> tuple[StrandFrames, StrandFrames]:
    """Forward and reverse-complement frames of every chunk of an uppercase ``buffer``.

    The reverse complement of the whole buffer holds each chunk's reverse complement at
    ``[len - end, len - start)``, so one pass serves all chunks.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    total = len(buffer)
    forward = translate_strand(buffer, starts, ends)
    reverse = translate_strand(reverse_complement(buffer), total - ends, total - starts)
    return forward, reverse


class Frame(NamedTuple):
    """One kept frame of a chunk: label ``F1``..``R3``, nucleotide and protein sequences (str)."""

    frame: str
    nucleotide: str
    protein: str


def six_frames(chunk: str | bytes) -> list[Frame]:
    """Kept frames of one chunk, in the original order F1, F2, F3, R1, R2, R3.

    The chunk is uppercased first (as the original does). Frames with a stop codon or no
    translatable codon are left out.
    """
    data = chunk.encode("ascii") if isinstance(chunk, str) else bytes(chunk)
    data = data.upper()
    bounds = np.array([0], dtype=np.int64), np.array([len(data)], dtype=np.int64)
    out: list[Frame] = []
    for strand_index, strand in enumerate(translate_both_strands(data, *bounds)):
        for f in range(3):
            if strand.kept[0, f]:
                out.append(
                    Frame(
                        FRAME_LABELS[3 * strand_index + f],
                        strand.nucleotide(0, f).decode("ascii"),
                        strand.protein(0, f).decode("ascii"),
                    )
                )
    return out


__all__ = [
    "FRAME_LABELS",
    "STANDARD_CODE",
    "Frame",
    "StrandFrames",
    "reverse_complement",
    "six_frames",
    "translate_both_strands",
    "translate_strand",
]
