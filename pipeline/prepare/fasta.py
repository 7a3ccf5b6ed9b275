"""Streamed, validated FASTA reading (plain text or gzip).

Parsing is Biopython's ``SimpleFastaParser`` (the parser behind ``SeqIO.parse(..., "fasta")``, which
the original tool used), so record ids and sequences match what the original saw: the id is the
title up to the first whitespace, sequence lines are joined with spaces and carriage returns removed.
On top of that every record is checked, and bad input raises `pipeline.core.errors.InputError` with the
file, the record (or line) and what to do:

- an empty file, or one whose first non-blank line does not start with ``>`` (not FASTA);
- a record with an empty id or an empty sequence;
- a duplicate record id (ids become chunk and frame ids downstream and must stay unique);
- a character outside the IUPAC nucleotide codes ``ACGTUNRYKMSWBDHV`` (either case). Gaps (``-``,
  ``.``), ``*`` and digits are refused rather than silently passed to the models;
- a gzip file that is truncated or corrupt, or a file that is not UTF-8 text.

Gzip is detected from the magic bytes, not the file name.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from Bio.SeqIO.FastaIO import SimpleFastaParser

from pipeline.core.errors import InputError

#: Accepted sequence characters: the IUPAC nucleotide codes, upper and lower case.
IUPAC_NUCLEOTIDES = b"ACGTUNRYKMSWBDHV"
_ACCEPTED = IUPAC_NUCLEOTIDES + IUPAC_NUCLEOTIDES.lower()
_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_text(path: Path) -> IO[str]:
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", newline=None)
    return open(path, encoding="utf-8", newline=None)


def _check_first_line(lines: Iterator[str], path: Path) -> Iterator[str]:
    """Refuse empty files and text that does not start with a ``>`` title line.

    Biopython skips anything before the first ``>``; a file whose first non-blank line is something
    else is almost always the wrong file (FASTQ, a table, a protein list), so it is refused here.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not line.startswith(">"):
            # the line itself is not shown: the file may be anything, a secret included
            raise InputError(
                f"{path}: not a FASTA file - line {number} does not start with '>'; "
                "give a nucleotide FASTA file (plain or gzip) whose records start with '>id'"
            )
        return itertools.chain([line], lines)
    raise InputError(f"{path}: the file is empty (no FASTA records); give a non-empty nucleotide FASTA file")


def _describe_bad_char(seq: bytes, bad: bytes) -> str:
    char = bad[:1]
    pos = seq.index(char) + 1
    return f"{char.decode('latin-1')!r} at position {pos}"


def read_fasta_bytes(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(record_id, sequence)`` for each record, the sequence as ASCII bytes in the input's case.

    Streams the file (one record in memory at a time, plus the set of ids seen). Raises
    `InputError` for the problems listed in the module docstring; records before a bad one have
    already been yielded, so callers that write files must write to temporary paths.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{src}: no such file; give the path of a nucleotide FASTA file (plain or gzip)")
    seen: set[str] = set()
    try:
        with _open_text(src) as handle:
            for title, seq in SimpleFastaParser(_check_first_line(iter(handle), src)):
                words = title.split(None, 1)
                if not words:
                    raise InputError(
                        f"{src}: a record has an empty title line ('>' alone) after record "
                        f"{len(seen)}; give every record an id"
                    )
                record_id = words[0]
                if not seq:
                    raise InputError(
                        f"{src}: record {record_id!r} has an empty sequence; remove it or add its sequence"
                    )
                if record_id in seen:
                    raise InputError(
                        f"{src}: record id {record_id!r} occurs more than once; make record ids unique "
                        "(the text up to the first space must differ)"
                    )
                seen.add(record_id)
                try:
                    data = seq.encode("ascii")
                except UnicodeEncodeError as exc:
                    raise InputError(
                        f"{src}: record {record_id!r} contains the non-ASCII character "
                        f"{seq[exc.start]!r} at position {exc.start + 1}; only IUPAC nucleotide codes "
                        f"({IUPAC_NUCLEOTIDES.decode()}) are accepted"
                    ) from None
                bad = data.translate(None, _ACCEPTED)
                if bad:
                    raise InputError(
                        f"{src}: record {record_id!r} contains {_describe_bad_char(data, bad)}, which is not "
                        f"an IUPAC nucleotide code ({IUPAC_NUCLEOTIDES.decode()}, either case); "
                        "remove gaps and other symbols, or give a nucleotide (not protein) file"
                    )
                yield record_id, data
    except UnicodeDecodeError:
        raise InputError(
            f"{src}: not a text FASTA file (bytes that are not UTF-8 text); give a nucleotide FASTA "
            "file, plain or gzip-compressed"
        ) from None
    except EOFError:
        raise InputError(
            f"{src}: the gzip stream is truncated (ended before its end marker); the file was cut "
            "short - copy or download it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(
            f"{src}: the gzip data is corrupt ({exc}); copy or download the file again"
        ) from None
    except io.UnsupportedOperation as exc:  # pragma: no cover - directories, sockets
        raise InputError(f"{src}: cannot be read as a file ({exc})") from None


def read_fasta(path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(record_id, sequence)`` string pairs, validated as in `read_fasta_bytes`.

    ``record_id`` is the title up to the first whitespace (as Biopython's ``SeqRecord.id``);
    ``sequence`` keeps the input's case.
    """
    for record_id, data in read_fasta_bytes(path):
        yield record_id, data.decode("ascii")


__all__ = ["IUPAC_NUCLEOTIDES", "is_gzip", "read_fasta", "read_fasta_bytes"]
