"""fair-esm's ESM-2 alphabet as a picklable byte lookup table (no fair-esm needed at encode time)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.errors import InputError
from pipeline.models.base import Tokenizer


class ESM2Tokenizer(Tokenizer):
    """fair-esm's ESM-1b/ESM-2 alphabet as a byte lookup table (picklable, no fair-esm at encode time).

    ``encode`` -> ``(L + 2,) int64``: ``<cls>``, one id per residue, ``<eos>``. Residue letters are the
    alphabet's single-character tokens (20 amino acids plus X, B, U, Z, O, ``.``, ``-``), case
    sensitive. fair-esm's batch converter raises ``KeyError`` on any other character (``*``, ``J``,
    lower case); this tokenizer raises `InputError` naming it instead. Long sequences are not
    truncated (see the module docstring).
    """

    def __init__(self, tokens: list[str], cls_idx: int, eos_idx: int, padding_idx: int) -> None:
        lut = np.full(256, -1, dtype=np.int64)
        for idx, tok in enumerate(tokens):
            if len(tok) == 1 and ord(tok) < 128:
                lut[ord(tok)] = idx
        self._lut = lut
        self.cls_idx = cls_idx
        self.eos_idx = eos_idx
        self._pad = padding_idx

    @classmethod
    def from_alphabet(cls, alphabet: Any) -> ESM2Tokenizer:
        """Build from a fair-esm ``Alphabet`` (``Alphabet.from_architecture("ESM-1b")``)."""
        return cls(list(alphabet.all_toks), alphabet.cls_idx, alphabet.eos_idx, alphabet.padding_idx)

    @classmethod
    def default(cls) -> ESM2Tokenizer:
        from esm.data import Alphabet

        return cls.from_alphabet(Alphabet.from_architecture("ESM-1b"))

    @property
    def pad_id(self) -> int:
        return self._pad

    def encode(self, sequence: str) -> np.ndarray:
        if not sequence:
            raise InputError("empty protein sequence; ESM-2 needs at least one residue (drop empty records)")
        try:
            raw = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            bad = next(c for c in sequence if ord(c) >= 128)
            raise InputError(
                f"protein sequence contains the non-ASCII character {bad!r} at position "
                f"{sequence.index(bad)}; ESM-2's alphabet has no such residue"
            ) from None
        ids = self._lut[raw]
        if (ids < 0).any():
            pos = int(np.flatnonzero(ids < 0)[0])
            raise InputError(
                f"protein sequence has {sequence[pos]!r} at position {pos}, which is not in ESM-2's alphabet "
                "(upper-case amino acids and X, B, U, Z, O); remove stop codons ('*') and clean the input"
            )
        out = np.empty(ids.size + 2, dtype=np.int64)
        out[0] = self.cls_idx
        out[1:-1] = ids
        out[-1] = self.eos_idx
        return out


__all__ = ["ESM2Tokenizer"]
