"""Golden tests of the original-format outputs and the per-record summary.

Expected file contents are written out by hand from hand-picked scores.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures.prepared import seal_prepared

from pipeline.classify.merge import (
    chunk_of,
    chunk_table,
    consensus,
    format_score,
    merge,
    record_of,
)
from pipeline.classify.scoring import write_scores

# (frame id, P(others), P(virus)) in protein.faa order
FRAMES = [
    ("seqB_chunk_1F1", 0.25, 0.75),  # virus frame, but the chunk's best "others" is higher
    ("seqB_chunk_1R2", 0.9, 0.1),
    ("seqB_chunk_2F3", 0.5, 0.5),  # exact tie: frame -> others, chunk -> True
    ("seqA_chunk_1F2", 0.9999, 1e-4),
    ("x_chunk_7_chunk_1F1", 0.125, 0.875),  # record id containing "_chunk_"
    ("x_chunk_7_chunk_1R3", 0.75, 0.25),
    ("Zeta_chunk_1F1", 0.0625, 0.9375),  # upper case sorts before lower case
]
CHUNKS = [
    "seqB_chunk_1",
    "seqB_chunk_2",
    "seqB_chunk_3",
    "seqA_chunk_1",
    "x_chunk_7_chunk_1",
    "Zeta_chunk_1",
    "noframes_chunk_1",
]

EXPECTED_PREDICTIONS = (
    "Sequence_ID\tPrediction\tscore1\tscore2\n"
    "seqB_chunk_1F1\tvirus\t0.25\t0.75\n"
    "seqB_chunk_1R2\tothers\t0.9\t0.1\n"
    "seqB_chunk_2F3\tothers\t0.5\t0.5\n"
    "seqA_chunk_1F2\tothers\t0.9999\t1e-04\n"
    "x_chunk_7_chunk_1F1\tvirus\t0.125\t0.875\n"
    "x_chunk_7_chunk_1R3\tothers\t0.75\t0.25\n"
    "Zeta_chunk_1F1\tvirus\t0.0625\t0.9375\n"
)
EXPECTED_HIGHESTSCORE = (
    "Modified_ID\tIs_Virus\n"
    "Zeta_chunk_1\tTrue\n"
    "seqA_chunk_1\tFalse\n"
    "seqB_chunk_1\tFalse\n"
    "seqB_chunk_2\tTrue\n"
    "x_chunk_7_chunk_1\tTrue\n"
)
EXPECTED_SUMMARY = (
    "record_id\tchunks\tchunks_with_frames\tviral_chunks\tmax_virus_score\tcall\n"
    "seqB\t3\t2\t1\t0.75\tvirus\n"
    "seqA\t1\t1\t0\t1e-04\tothers\n"
    "x_chunk_7\t1\t1\t1\t0.875\tvirus\n"
    "Zeta\t1\t1\t1\t0.9375\tvirus\n"
    "noframes\t1\t0\t0\t\tno_frames\n"
)


def _prepared(tmp_path, chunks=CHUNKS):
    d = tmp_path / "run"
    d.mkdir()
    (d / "chunked.fa").write_text("".join(f">{c}\nACGTACGTAC\n" for c in chunks))
    return seal_prepared(d)


def _scores(tmp_path, frames=FRAMES):
    ids = [f[0] for f in frames]
    arr = np.array([[f[1], f[2]] for f in frames], dtype=np.float32).reshape(-1, 2)
    return write_scores(ids, arr, tmp_path / "frame_scores.parquet")


def test_golden_outputs(tmp_path) -> None:
    prepared = _prepared(tmp_path)
    paths = merge(_scores(tmp_path), prepared, tmp_path / "out")
    assert paths["predictions"].name == "prediction_results.txt"
    assert paths["highestscore"].name == "prediction_results_highestscore.csv"
    assert paths["predictions"].read_text() == EXPECTED_PREDICTIONS
    assert paths["highestscore"].read_text() == EXPECTED_HIGHESTSCORE
    assert paths["summary"].read_text() == EXPECTED_SUMMARY


def test_score_format_is_numpy_float32_str() -> None:
    # shortest round-trip digits of the float32 value, as the original's str(np.float32) prints
    assert format_score(0.1) == "0.1"
    assert format_score(1e-4) == "1e-04"
    assert format_score(np.float32(1 / 3)) == "0.33333334"
    assert format_score(1.0) == "1.0"
    assert format_score(2.5e-07) == "2.5e-07"


def test_consensus_tie_is_virus() -> None:
    table = consensus(
        ["r_chunk_1F1", "r_chunk_1R1"], np.array([0.6, 0.3], np.float32), np.array([0.4, 0.6], np.float32)
    )
    assert table["Is_Virus"].tolist() == [True]  # max score2 0.6 == max score1 0.6


def test_group_key_drops_last_two_characters() -> None:
    assert chunk_of("a_chunk_12R3") == "a_chunk_12"
    assert record_of("x_chunk_7_chunk_1") == "x_chunk_7"
    assert record_of("plain") == "plain"


def test_group_order_is_sorted_by_key() -> None:
    ids = ["s2_chunk_1F1", "s10_chunk_1F1", "S9_chunk_1F1", "s1_chunk_10F1", "s1_chunk_2F1"]
    table = consensus(ids, np.full(5, 0.5, np.float32), np.full(5, 0.5, np.float32))
    assert table["Modified_ID"].tolist() == [
        "S9_chunk_1",
        "s10_chunk_1",
        "s1_chunk_10",
        "s1_chunk_2",
        "s2_chunk_1",
    ]


def test_no_frames_gives_header_only_outputs(tmp_path) -> None:
    prepared = _prepared(tmp_path, ["a_chunk_1", "a_chunk_2", "b_chunk_1"])
    paths = merge(_scores(tmp_path, []), prepared, tmp_path / "out")
    assert paths["predictions"].read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert paths["highestscore"].read_text() == "Modified_ID\tIs_Virus\n"
    assert paths["summary"].read_text() == (
        "record_id\tchunks\tchunks_with_frames\tviral_chunks\tmax_virus_score\tcall\n"
        "a\t2\t0\t0\t\tno_frames\n"
        "b\t1\t0\t0\t\tno_frames\n"
    )


def test_empty_input_gives_header_only_outputs(tmp_path) -> None:
    prepared = _prepared(tmp_path, [])
    paths = merge(_scores(tmp_path, []), prepared, tmp_path / "out")
    assert paths["summary"].read_text() == (
        "record_id\tchunks\tchunks_with_frames\tviral_chunks\tmax_virus_score\tcall\n"
    )


def test_scores_not_in_chunked_fa_fail(tmp_path) -> None:
    from pipeline.core.errors import InputError

    prepared = _prepared(tmp_path, ["other_chunk_1"])
    with pytest.raises(InputError, match="not in chunked.fa"):
        merge(_scores(tmp_path), prepared, tmp_path / "out")


def test_matches_the_original_pandas_recipe_on_random_scores(tmp_path) -> None:
    """Independent oracle: re-derive the consensus from our prediction_results.txt the way the
    original script does (read_csv, drop two characters, groupby + per-group max comparison)."""
    rng = np.random.default_rng(7)
    frames = []
    for rec in range(40):
        for chunk in range(1, rng.integers(1, 4) + 1):
            for frame in rng.choice(
                ["F1", "F2", "F3", "R1", "R2", "R3"], size=rng.integers(1, 4), replace=False
            ):
                p = np.float32(rng.choice([0.5, rng.random()]))
                frames.append((f"rec{rec}_chunk_{chunk}{frame}", float(1 - p), float(p)))
    chunks = list(dict.fromkeys(chunk_of(f[0]) for f in frames))
    prepared = _prepared(tmp_path, chunks)
    paths = merge(_scores(tmp_path, frames), prepared, tmp_path / "out")

    df = pd.read_csv(paths["predictions"], sep="\t")
    df["Modified_ID"] = df["Sequence_ID"].str[:-2]
    rows = []
    for key, group in df.groupby("Modified_ID"):
        rows.append(f"{key}\t{group['score2'].max() >= group['score1'].max()}\n")
    assert paths["highestscore"].read_text() == "Modified_ID\tIs_Virus\n" + "".join(rows)
    labels = np.where(df["score2"] > df["score1"], "virus", "others")
    assert df["Prediction"].tolist() == labels.tolist()


def test_chunk_table_includes_chunks_without_frames() -> None:
    ids = [f[0] for f in FRAMES]
    s = np.array([[f[1], f[2]] for f in FRAMES], np.float32)
    table = chunk_table(ids, s[:, 0], s[:, 1], CHUNKS)
    assert table["chunk_id"].tolist() == CHUNKS
    row = table.set_index("chunk_id").loc["seqB_chunk_3"]
    assert row["frames"] == 0 and np.isnan(row["max_score_virus"]) and not row["is_virus"]
    assert table.set_index("chunk_id").loc["x_chunk_7_chunk_1", "chunk_index"] == 1
    assert table.set_index("chunk_id").loc["x_chunk_7_chunk_1", "record_id"] == "x_chunk_7"


def test_record_plot_png(tmp_path) -> None:
    from pipeline.classify.plots import plot_record_scores

    ids = [f[0] for f in FRAMES]
    s = np.array([[f[1], f[2]] for f in FRAMES], np.float32)
    table = chunk_table(ids, s[:, 0], s[:, 1], CHUNKS)
    png = plot_record_scores(table, chunk_size=300, path=tmp_path / "scores.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "scores.png").read_bytes() == png
    import io

    from PIL import Image

    # one panel per scored record (noframes has none): 4 panels, the height grows with them
    one = Image.open(io.BytesIO(plot_record_scores(table, records=["seqB"])))
    four = Image.open(io.BytesIO(png))
    assert four.size[1] > 2 * one.size[1]
    empty = plot_record_scores(table.iloc[0:0])
    assert empty[:4] == b"\x89PNG"
