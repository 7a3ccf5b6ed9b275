"""``virnucpro predict``: option wiring, the offline demo end to end, empty inputs, fail-fast loading."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.core.config import Settings

# Stop codons in all three forward frames, and the sequence is its own reverse complement,
# so all six frames of every chunk contain a stop: nothing survives translation.
ALL_STOPS = "TAACTAACTAATTAGTTAGTTA"


def _fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{name} description\n{seq}\n" for name, seq in records.items()))
    return path


def _coding_dna(n_codons: int, seed: int) -> str:
    """Random sense codons only, so one forward frame of every chunk is stop-free."""
    import itertools

    sense = [
        "".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in {"TAA", "TAG", "TGA"}
    ]
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(sense, size=n_codons))


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, obj=Settings(progress=False), catch_exceptions=False)
    return result


def test_precision_defaults_and_demo_models() -> None:
    from pipeline.cli.predict import build_predict_config

    common = dict(
        chunk_size=300,
        esm_model="esm2_t33_650M_UR50D",
        dnabert_model="zhihan1996/DNABERT-S",
        classifier="m.pth",
        attention="auto",
        compile_=True,
        resume=False,
        settings=Settings(disable_compile=True),
    )
    cpu = build_predict_config(Path("in.fa"), Path("out"), gpus=None, precision=None, demo=False, **common)
    assert cpu.esm.precision == cpu.dnabert.precision == "fp32" and cpu.gpus == ()
    assert cpu.esm.compile is False  # VIRNUCPRO_DISABLE_COMPILE wins over --compile
    gpu = build_predict_config(Path("in.fa"), Path("out"), gpus="0,1", precision=None, demo=False, **common)
    assert gpu.esm.precision == gpu.dnabert.precision == "bf16" and gpu.gpus == (0, 1)
    fp8 = build_predict_config(Path("in.fa"), Path("out"), gpus="0", precision="fp8", demo=False, **common)
    assert fp8.esm.precision == "fp8" and fp8.dnabert.precision == "bf16"  # FP8 is ESM-2's MLP only
    demo = build_predict_config(Path("in.fa"), Path("out"), gpus=None, precision="bf16", demo=True, **common)
    assert demo.esm.model == "random:esm2_t6_8M_UR50D" and demo.dnabert.model == "random:dnabert-s-tiny"
    assert demo.classifier == "random" and demo.esm.precision == "bf16" and demo.demo


def test_classifier_is_required_without_demo(tmp_path) -> None:
    fa = _fasta(tmp_path / "in.fa", {"r": "ACGT" * 30})
    result = CliRunner().invoke(cli, ["predict", str(fa), "-o", str(tmp_path / "out")], obj=Settings())
    assert result.exit_code == 2
    assert "--classifier" in result.output


def test_unsafe_classifier_fails_before_any_work(tmp_path) -> None:
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save(Evil(), tmp_path / "evil.pth")
    fa = _fasta(tmp_path / "in.fa", {"r": "ACGT" * 30})
    out = tmp_path / "out"
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(fa), "-o", str(out), "--classifier", str(tmp_path / "evil.pth")])
    assert exit_info.value.code == 4  # ModelLoadError
    assert not (tmp_path / "pwned").exists()
    assert not (out / "chunked.fa").exists()  # refused before prepare ran


def test_no_surviving_frame_gives_header_only_outputs(tmp_path) -> None:
    fa = _fasta(tmp_path / "in.fa", {"stops": ALL_STOPS, "tiny": "AC"})
    out = tmp_path / "out"
    result = _invoke(["predict", str(fa), "-o", str(out), "--demo", "--chunk-size", "300"])
    assert result.exit_code == 0, result.output
    assert "no frame survived" in result.output
    assert (out / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (out / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"
    assert (out / "record_summary.tsv").read_text() == (
        "record_id\tchunks\tchunks_with_frames\tviral_chunks\tmax_virus_score\tcall\n"
        "stops\t1\t0\t0\t\tno_frames\n"
        "tiny\t1\t0\t0\t\tno_frames\n"
    )
    record = json.loads((out / "run_record.json").read_text())
    assert record["counts"]["frames"] == 0
    assert "headers only" in record["note"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path) -> None:
    import torch

    torch.set_num_threads(1)
    fa = _fasta(
        tmp_path / "in.fa",
        {
            "alpha": _coding_dna(217, 1)[:650],
            "beta_chunk_9": _coding_dna(94, 2)[:280],  # a record id that itself contains "_chunk_"
            "gamma": ALL_STOPS,
        },
    )
    out = tmp_path / "out"
    started = time.perf_counter()
    result = _invoke(["predict", str(fa), "-o", str(out), "--demo", "--chunk-size", "300"])
    wall = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "NOT biologically meaningful" in result.output

    protein_ids = [
        line[1:].strip() for line in (out / "protein.faa").read_text().splitlines() if line.startswith(">")
    ]
    assert protein_ids, "the random sequences should keep some frames"
    lines = (out / "prediction_results.txt").read_text().splitlines()
    assert lines[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == protein_ids  # one row per kept frame, protein.faa order
    for _, label, s1, s2 in rows:
        p1, p2 = np.float32(s1), np.float32(s2)
        assert abs(float(p1) + float(p2) - 1.0) < 1e-5
        assert label == ("virus" if p2 > p1 else "others")
        assert s1 == str(p1) and s2 == str(p2)  # printed like the original

    cons = (out / "prediction_results_highestscore.csv").read_text().splitlines()
    assert cons[0] == "Modified_ID\tIs_Virus"
    keys = [c.split("\t")[0] for c in cons[1:]]
    assert keys == sorted({pid[:-2] for pid in protein_ids})
    assert all(c.split("\t")[1] in {"True", "False"} for c in cons[1:])

    summary = (out / "record_summary.tsv").read_text().splitlines()
    assert [s.split("\t")[0] for s in summary[1:]] == ["alpha", "beta_chunk_9", "gamma"]
    alpha = summary[1].split("\t")
    assert alpha[1] == "3"  # 650 bp in 300 bp chunks
    assert summary[3].split("\t")[-1] == "no_frames"

    record = json.loads((out / "run_record.json").read_text())
    assert record["schema"] == "virnucpro.run/1" and record["kind"] == "predict"
    assert record["demo"] is True and "NOT biologically meaningful" in record["note"]
    stages = [s["stage"] for s in record["stages"]]
    assert stages[:2] == ["prepare", "shard"] and stages[-2:] == ["classify", "merge"]
    assert stages.count("embed") == 2
    # durations in seconds of steps run one after another inside this command
    seconds = [s["seconds"] for s in record["stages"]]
    assert all(isinstance(x, (int, float)) for x in seconds) and 0 < sum(seconds) <= wall, (seconds, wall)
    assert record["config"]["esm"]["model"] == "random:esm2_t6_8M_UR50D"
    assert record["counts"]["frames"] == len(protein_ids)

    from pipeline.classify.plots import plot_run

    assert plot_run(out)[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume reuses everything and reproduces the same files
    first = (out / "prediction_results.txt").read_text()
    again = _invoke(["predict", str(fa), "-o", str(out), "--demo", "--chunk-size", "300", "--resume"])
    assert again.exit_code == 0, again.output
    assert (out / "prediction_results.txt").read_text() == first


def _scores(out: Path) -> dict[str, tuple[str, float]]:
    """prediction_results.txt as {frame id: (label, virus score)}."""
    rows = [line.split("\t") for line in (out / "prediction_results.txt").read_text().splitlines()[1:]]
    return {r[0]: (r[1], float(r[3])) for r in rows}


@pytest.mark.gpu
def test_demo_on_one_gpu_matches_the_gpu_fp32_run(tmp_path) -> None:
    """The default (reduced-precision) GPU run against an fp32 run on the same GPU. Not against a
    CPU run: ``random:`` weights are drawn by the device's own generator, so a CPU run has other
    weights and its scores are no oracle for the GPU's."""
    records = {f"r{i}": _coding_dna(100 + 40 * i, seed=i) for i in range(6)}
    fa = _fasta(tmp_path / "in.fa", records)
    gpu, fp32 = tmp_path / "gpu", tmp_path / "fp32"
    result = _invoke(["predict", str(fa), "-o", str(gpu), "--demo", "--gpus", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads((gpu / "run_record.json").read_text())
    assert record["config"]["esm"]["precision"] == "bf16"  # the GPU default (docs/esm2.md)
    assert record["workers"]["gpus"] == [0]
    assert record["workers"]["per_worker"][0]["gpu_busy_fraction"] is not None
    args = ["predict", str(fa), "-o", str(fp32), "--demo", "--gpus", "0", "--precision", "fp32"]
    assert _invoke(args).exit_code == 0
    got, want = _scores(gpu), _scores(fp32)
    assert list(got) == list(want) and len(want) == record["counts"]["frames"]
    # fp16/bf16 embeddings stay within cosine 0.9999/0.999 of fp32 (docs/esm2.md), which moves the
    # fp32 MLP head's probabilities by far less than 0.02 (bf16 on CPU: 0.002); labels may differ
    # only that close to 0.5.
    for frame, (label, score) in want.items():
        assert abs(got[frame][1] - score) <= 0.02, (frame, got[frame], score)
        if abs(score - 0.5) > 0.02:
            assert got[frame][0] == label, (frame, got[frame], score)


@pytest.mark.gpu
def test_fp8_on_one_gpu_matches_the_gpu_fp32_run(tmp_path) -> None:
    """``--precision fp8`` through predict: ESM-2's MLP in FP8, DNABERT-S in bf16, scores near fp32's."""
    from pipeline.models.fp8 import fp8_unavailable_reason

    reason = fp8_unavailable_reason("cuda")
    if reason is not None:
        pytest.skip(reason)
    records = {f"r{i}": _coding_dna(100 + 40 * i, seed=i) for i in range(6)}
    fa = _fasta(tmp_path / "in.fa", records)
    fp8, fp32 = tmp_path / "fp8", tmp_path / "fp32"
    result = _invoke(["predict", str(fa), "-o", str(fp8), "--demo", "--gpus", "0", "--precision", "fp8"])
    assert result.exit_code == 0, result.output
    record = json.loads((fp8 / "run_record.json").read_text())
    assert record["config"]["esm"]["precision"] == "fp8"
    assert record["config"]["dnabert"]["precision"] == "bf16"
    assert (
        _invoke(
            ["predict", str(fa), "-o", str(fp32), "--demo", "--gpus", "0", "--precision", "fp32"]
        ).exit_code
        == 0
    )
    got, want = _scores(fp8), _scores(fp32)
    assert list(got) == list(want) and len(want) == record["counts"]["frames"]
    for frame, (_, score) in want.items():  # fp8 embeddings: cosine >= 0.995 (docs/esm2.md)
        assert abs(got[frame][1] - score) <= 0.05, (frame, got[frame], score)


def test_preflight_refuses_before_writing_anything(tmp_path) -> None:
    """Missing GPUs, unavailable attention backends and fp8 without FP8 hardware (here: the CPU) fail
    before prepare writes a file."""
    import torch

    from pipeline.core.errors import BackendUnavailableError, ConfigError

    fa = _fasta(tmp_path / "in.fa", {"r": _coding_dna(60, seed=1)})
    bad_gpu = str(torch.cuda.device_count())  # one past the last visible device
    for args, error, fragment in [
        (["--gpus", bad_gpu], ConfigError, f"GPU {bad_gpu} is not visible"),
        (["--attention", "flash-attn"], BackendUnavailableError, "flash-attn"),
        (["--precision", "fp8"], BackendUnavailableError, "--precision fp8 is not available"),
    ]:
        out = tmp_path / f"out-{args[0].strip('-')}"
        result = CliRunner().invoke(
            cli, ["predict", str(fa), "-o", str(out), "--demo", *args], obj=Settings(progress=False)
        )
        assert isinstance(result.exception, error) and fragment in str(result.exception)
        assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_resume_with_another_chunk_size_is_refused_before_touching_the_run(tmp_path) -> None:
    from pipeline.core.errors import ResumeMismatchError

    fa = _fasta(tmp_path / "in.fa", {"r1": _coding_dna(250, seed=2), "r2": _coding_dna(120, seed=3)})
    out = tmp_path / "out"
    assert _invoke(["predict", str(fa), "-o", str(out), "--demo", "--chunk-size", "500"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result = CliRunner().invoke(
        cli,
        ["predict", str(fa), "-o", str(out), "--demo", "--chunk-size", "300", "--resume"],
        obj=Settings(progress=False),
    )
    assert isinstance(result.exception, ResumeMismatchError)
    assert "chunk size" in str(result.exception) and "then 500, now 300" in str(result.exception)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the same input and chunk size resume cleanly
    assert (
        _invoke(["predict", str(fa), "-o", str(out), "--demo", "--chunk-size", "500", "--resume"]).exit_code
        == 0
    )


@pytest.mark.slow
def test_kept_embeddings_rescore_to_the_same_scores(tmp_path) -> None:
    """--keep-embeddings writes both models' float32 parts; scoring them with the two-step path
    (`classify`, as `virnucpro train` and a rescoring read them) gives the one-pass scores."""
    import pyarrow.parquet as pq

    from pipeline.classify.scoring import classify

    fa = _fasta(tmp_path / "in.fa", {f"r{i}": _coding_dna(60 + 20 * i, seed=i) for i in range(4)})
    out = tmp_path / "out"
    assert _invoke(["predict", str(fa), "-o", str(out), "--demo", "--keep-embeddings"]).exit_code == 0
    dirs = {kind: sorted((out / "embeddings" / kind).iterdir()) for kind in ("dnabert-s", "esm2")}
    assert [d.name for d in dirs["esm2"]] == ["shard-000"] == [d.name for d in dirs["dnabert-s"]]
    again = classify(out, dirs["dnabert-s"], dirs["esm2"], "random", tmp_path / "rescored.parquet")
    one_pass, two_step = pq.read_table(out / "frame_scores.parquet"), pq.read_table(again)
    assert one_pass.column("id").to_pylist() == two_step.column("id").to_pylist()
    np.testing.assert_allclose(
        one_pass.column("score_virus").to_numpy(), two_step.column("score_virus").to_numpy(), atol=1e-6
    )
    assert not (tmp_path / "plain" / "embeddings").exists()
    assert _invoke(["predict", str(fa), "-o", str(tmp_path / "plain"), "--demo"]).exit_code == 0
    assert not (tmp_path / "plain" / "embeddings").exists()  # not written unless asked
