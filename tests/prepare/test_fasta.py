"""FASTA reading: ids, case, gzip by magic bytes, and one test per class of bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pipeline.core.errors import InputError
from pipeline.prepare.fasta import read_fasta, read_fasta_bytes


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_ids_sequences_and_case(tmp_path: Path) -> None:
    src = write(
        tmp_path / "a.fa", ">seq1 some description\nACGTacgt\nNNRY\n>seq2\tdesc\r\nAC GT\r\n\n>seq3\nu\n"
    )
    assert list(read_fasta(src)) == [("seq1", "ACGTacgtNNRY"), ("seq2", "ACGT"), ("seq3", "u")]


def test_bytes_reader_matches_text_reader(tmp_path: Path) -> None:
    src = write(tmp_path / "a.fa", ">x\nACGT\n>y\nggcc\n")
    assert list(read_fasta_bytes(src)) == [("x", b"ACGT"), ("y", b"ggcc")]


def test_leading_blank_lines_are_fine(tmp_path: Path) -> None:
    src = write(tmp_path / "a.fa", "\n\n>x\nACGT\n")
    assert list(read_fasta(src)) == [("x", "ACGT")]


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    text = ">r1 d\nACGTN\nAC\n>r2\nTTTT\n"
    gz_named_fa = tmp_path / "input.fa"
    gz_named_fa.write_bytes(gzip.compress(text.encode()))
    plain_named_gz = write(tmp_path / "input.fa.gz", text)
    expected = [("r1", "ACGTNAC"), ("r2", "TTTT")]
    assert list(read_fasta(gz_named_fa)) == expected
    assert list(read_fasta(plain_named_gz)) == expected


def test_streams_records_before_an_error(tmp_path: Path) -> None:
    src = write(tmp_path / "a.fa", ">good\nACGT\n>bad\nAC-GT\n")
    reader = read_fasta(src)
    assert next(reader) == ("good", "ACGT")
    with pytest.raises(InputError):
        next(reader)


BAD_INPUTS = {
    "empty": ("", ["empty"]),
    "blank_only": ("\n  \n", ["empty"]),
    "not_fasta": ("@read1\nACGT\n+\nIIII\n", ["not a FASTA", "line 1"]),
    "empty_sequence": (">a\nACGT\n>b desc\n>c\nAC\n", ["'b'", "empty sequence"]),
    "empty_sequence_last": (">a\nACGT\n>b\n", ["'b'", "empty sequence"]),
    "duplicate_id": (">a x\nACGT\n>b\nAC\n>a y\nGG\n", ["'a'", "more than once"]),
    "gap_char": (">a\nAC-GT\n", ["'a'", "'-'", "position 3"]),
    "protein": (">p\nMKLVQE\n", ["'p'", "'L'", "position 3"]),
    "digits": (">a\nACGT\n12\n", ["'1'", "position 5"]),
    "non_ascii": (">a\nACGé\n", ["'a'", "non-ASCII"]),
    "empty_id": (">a\nAC\n>\nACGT\n", ["empty title"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_clear_error(tmp_path: Path, case: str) -> None:
    text, fragments = BAD_INPUTS[case]
    src = write(tmp_path / f"{case}.fa", text)
    with pytest.raises(InputError) as info:
        list(read_fasta(src))
    message = str(info.value)
    assert str(src) in message
    for fragment in fragments:
        assert fragment in message


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress((">r\n" + "ACGT" * 5000 + "\n").encode())
    src = tmp_path / "cut.fa.gz"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        list(read_fasta(src))


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = bytearray(gzip.compress((">r\n" + "ACGT" * 100 + "\n").encode()))
    data[-8] ^= 0xFF  # CRC of the member
    src = tmp_path / "bad.fa.gz"
    src.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt"):
        list(read_fasta(src))


def test_binary_file(tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    src.write_bytes(b">a\nAC\xff\xfeGT\n")
    with pytest.raises(InputError, match="not a text FASTA"):
        list(read_fasta(src))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_fasta(tmp_path / "nope.fa"))
