"""The frame runner (DNABERT-S -> ESM-2 -> head in one pass) against the two-step path, resume, signals.

The oracle is the pipeline's other path: `embed_shard` per model, then `score_frames` over the
stored embeddings; both must give the same scores for every frame.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import EmbedConfig, EncoderConfig
from pipeline.core.errors import ConfigError, Interrupted
from pipeline.embed.frames import FrameJob, load_frame_models, read_scores, score_shard
from pipeline.embed.parts import PartFiles, open_embeddings, read_metadata
from pipeline.run.predict import ClassifierHead

ESM = "random:esm2_t6_8M_UR50D"
DNABERT = "random:dnabert-s-tiny"
AMINO = "ACDEFGHIKLMNPQRSTVWY"
ROOT = Path(__file__).resolve().parents[2]


def _shard(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 40, n)
    table = pa.table(
        {
            "id": [f"rec{i}_F{i % 3 + 1}" for i in range(n)],
            "nucleotide": ["".join(rng.choice(list("ACGT"), 3 * int(k))) for k in lengths],
            "protein": ["".join(rng.choice(list(AMINO), int(k))) for k in lengths],
        }
    )
    pq.write_table(table, path)
    return path


def _job(**kw) -> FrameJob:
    kw.setdefault("part_size", 4)
    kw.setdefault("token_budget", 96)
    return FrameJob(
        dnabert=EncoderConfig(DNABERT), esm=EncoderConfig(ESM), head=ClassifierHead("random:3"), **kw
    )


@pytest.fixture(scope="module")
def models():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_frame_models(_job())
    torch.set_num_threads(threads)


def _two_step(shard: Path, tmp: Path, device: str = "cpu") -> dict[str, np.ndarray]:
    """Scores by the other path: both embeddings written, then the MLP over them. ``device`` must
    be the frame runner's: ``random:`` weights come from that device's generator."""
    from pipeline.classify.mlp import load_classifier
    from pipeline.classify.scoring import score_frames
    from pipeline.embed.runner import embed_shard

    dirs = {}
    for kind in ("dnabert-s", "esm2"):
        model = DNABERT if kind == "dnabert-s" else ESM
        cfg = EmbedConfig(
            EncoderConfig(model), device=device, token_budget=64, num_workers=0, part_size=5, progress=False
        )
        dirs[kind] = tmp / f"two-step-{kind}"
        embed_shard(shard, None, kind, cfg, dirs[kind])
    dna, prot = open_embeddings(dirs["dnabert-s"]), open_embeddings(dirs["esm2"])
    frames = pq.read_table(shard, columns=["id"]).column("id").to_pylist()
    head = load_classifier("random:3", dna.vectors.shape[1] + prot.vectors.shape[1])
    scores = score_frames(frames, list(dna.ids), dna.vectors, list(prot.ids), prot.vectors, head)
    return dict(zip(frames, scores))


def _scores(out: Path) -> dict[str, np.ndarray]:
    ids, scores = read_scores([out])
    return dict(zip(ids, scores))


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want)
    for i, v in want.items():
        np.testing.assert_allclose(got[i], v, rtol=1e-5, atol=atol, err_msg=i)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("frames-ref")
    shard = _shard(root / "shard-000.parquet", 14)
    return shard, _two_step(shard, root)


def test_one_pass_scores_equal_embedding_then_classifying(tmp_path, models, reference) -> None:
    shard, want = reference
    result = score_shard(shard, _job(), tmp_path / "scores", models=models)
    assert (result.status, result.frames, result.parts, result.parts_written) == ("complete", 14, 4, 4)
    assert result.models["esm2"].sequences == result.models["dnabert-s"].sequences == 14
    meta = read_metadata(tmp_path / "scores")
    assert (
        meta["complete"] and meta["hidden_size"] == 2 and meta["columns"] == ["score_others", "score_virus"]
    )
    _assert_same(_scores(tmp_path / "scores"), want)
    assert result.embedding_dirs == {}  # nothing but scores unless asked


def test_kept_embeddings_equal_the_runner_output(tmp_path, models, reference) -> None:
    shard, _ = reference
    job = _job(keep_embeddings=True, embeddings_root=tmp_path / "emb")
    result = score_shard(shard, job, tmp_path / "scores" / "shard-000", models=models)
    assert set(result.embedding_dirs) == {"dnabert-s", "esm2"}
    from pipeline.embed.runner import embed_shard

    for kind, model in (("dnabert-s", DNABERT), ("esm2", ESM)):
        kept = open_embeddings(tmp_path / "emb" / kind / "shard-000")
        assert kept.vectors.dtype == np.float32
        cfg = EmbedConfig(EncoderConfig(model), token_budget=64, num_workers=0, part_size=5, progress=False)
        embed_shard(shard, None, kind, cfg, tmp_path / f"alone-{kind}")
        alone = open_embeddings(tmp_path / f"alone-{kind}")
        np.testing.assert_allclose(
            kept.lookup(alone.ids.tolist()), np.asarray(alone.vectors), rtol=1e-5, atol=1e-6
        )


def test_resume_keeps_intact_parts_and_redoes_damaged_ones(tmp_path, models, reference) -> None:
    shard, want = reference
    out = tmp_path / "scores"
    score_shard(shard, _job(), out, models=models)
    with open(PartFiles(out, 1).vectors, "r+b") as fh:  # flip the last byte of part 1's vectors
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    PartFiles(out, 2).marker.unlink()
    with pytest.raises(ConfigError, match="not empty; pass --resume"):
        score_shard(shard, _job(), out, models=models)
    result = score_shard(shard, _job(resume=True), out, models=models)
    assert (result.parts_skipped, result.parts_written) == (2, 2)
    _assert_same(_scores(out), want)


def test_a_stop_during_the_last_part_writes_it_then_interrupts(
    tmp_path, models, reference, monkeypatch
) -> None:
    """SIGTERM while the only part is in flight: the part is finished and written, the run stops
    (`Interrupted`, exit 75 at the CLI) and a resume has nothing left to do."""
    import pipeline.embed.frames as frames

    shard, want = reference
    stop = threading.Event()
    issue = frames._PartIssuer.issue

    def issue_then_signal(self, p):
        part = issue(self, p)
        stop.set()  # what the SIGTERM handler does, at the point of interest
        return part

    monkeypatch.setattr(frames._PartIssuer, "issue", issue_then_signal)
    out = tmp_path / "scores"
    with pytest.raises(Interrupted, match="after writing 1 part"):
        score_shard(shard, _job(part_size=100), out, models=models, stop=stop)
    assert read_metadata(out)["complete"]
    monkeypatch.setattr(frames._PartIssuer, "issue", issue)
    result = score_shard(shard, _job(part_size=100, resume=True), out, models=models)
    assert (result.parts_skipped, result.parts_written) == (1, 0)
    _assert_same(_scores(out), want)


def test_progress_reports_frames_and_tokens(tmp_path, models, reference) -> None:
    from pipeline.embed.progress import ProgressFile

    shard, _ = reference
    seen = []
    score_shard(shard, _job(), tmp_path / "scores", models=models, progress=ProgressFile(None, seen.append))
    assert [p.frames_done for p in seen] == [0, 4, 8, 12, 14]
    assert seen[-1].tokens_done == seen[-1].tokens_todo > 0


# ----------------------------------------------------------------------------------------------
# the CLI in a child process: SIGTERM during the only part -> exit 75, then --resume


CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
import pipeline.embed.frames as frames
import pipeline.embed.runner as runner
which = sys.argv[1]
if which == "frames":
    issue = frames._PartIssuer.issue
    def issue_then_term(self, p):
        part = issue(self, p)
        os.kill(os.getpid(), signal.SIGTERM)  # at the point of interest: the only part is in flight
        return part
    frames._PartIssuer.issue = issue_then_term
else:
    issue = runner._DeviceLoop.issue
    def issue_then_term(self, batch):
        issue(self, batch)
        if not getattr(runner, "_signalled", False):
            runner._signalled = True
            os.kill(os.getpid(), signal.SIGTERM)
    runner._DeviceLoop.issue = issue_then_term
from pipeline.cli import main
main(sys.argv[2:])
"""


def _child(which: str, args: list[str], patched: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRNUCPRO_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
    plain = "import sys, torch\ntorch.set_num_threads(1)\nfrom pipeline.cli import main\nmain(sys.argv[2:])"
    code = CHILD if patched else plain
    return subprocess.run(
        [sys.executable, "-c", code, which, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _fasta(path: Path) -> Path:
    rng = np.random.default_rng(5)
    sense = [
        a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in {"TAA", "TAG", "TGA"}
    ]
    path.write_text("".join(f">r{i}\n{''.join(rng.choice(sense, 40))}\n" for i in range(6)))
    return path


@pytest.mark.slow
def test_sigterm_during_the_only_part_of_predict_exits_75_and_resume_is_exact(tmp_path) -> None:
    fa = _fasta(tmp_path / "in.fa")
    clean = _child("frames", ["predict", str(fa), "-o", str(tmp_path / "clean"), "--demo"], patched=False)
    assert clean.returncode == 0, clean.stderr[-2000:]
    out = tmp_path / "out"
    stopped = _child("frames", ["predict", str(fa), "-o", str(out), "--demo"])
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert not (out / "prediction_results.txt").exists()  # stopped before merging
    resumed = _child("frames", ["predict", str(fa), "-o", str(out), "--demo", "--resume"], patched=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "record_summary.tsv"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


@pytest.mark.slow
def test_sigterm_during_the_only_part_of_embed_exits_75_and_resume_is_exact(tmp_path) -> None:
    shard = _shard(tmp_path / "shard-000.parquet", 6, seed=2)
    args = [
        "embed",
        str(shard),
        "--kind",
        "esm2",
        "--model",
        ESM,
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--token-budget",
        "64",
        "--part-size",
        "100",
        "--num-workers",
        "0",
    ]
    stopped = _child("runner", [*args, "-o", str(tmp_path / "out")])
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    resumed = _child("runner", [*args, "-o", str(tmp_path / "out"), "--resume"], patched=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    clean = _child("runner", [*args, "-o", str(tmp_path / "clean")], patched=False)
    assert clean.returncode == 0, clean.stderr[-2000:]
    a, b = open_embeddings(tmp_path / "out"), open_embeddings(tmp_path / "clean")
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))


# ----------------------------------------------------------------------------------------------
# resident workers (processes)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_resident_workers_score_like_one_process(tmp_path, reference) -> None:
    from pipeline.embed.multigpu.coordinator import score_all
    from pipeline.prepare.shard import write_table_shards

    shard, want = reference
    shards = write_table_shards(pq.read_table(shard), 2, tmp_path / "shards")
    summary = score_all(
        shards, replace(_job(), device="cpu"), None, tmp_path / "scores", n_workers=2, cpu_threads=1
    )
    assert [w["tasks"] for w in summary["workers"]] == [["shard-000"], ["shard-001"]]
    assert summary["sequences"] == 14 and summary["finish_spread_seconds"] is not None
    assert all(w["gpu_busy_fraction"] is not None for w in summary["workers"])
    ids, scores = read_scores([Path(d) for d in summary["output_dirs"]])
    _assert_same(dict(zip(ids, scores)), want)
    stopped = summary["records"][0]
    assert stopped["models"]["esm2"]["tokens"] > 0


def test_signal_helper_counts_and_aborts_on_a_second_signal() -> None:
    from pipeline.embed.multigpu.executor import StopSignals

    stop = StopSignals(abort_on_second=True)
    stop.handle(signal.SIGTERM)
    assert stop.is_set() and stop.first == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT)


@pytest.mark.gpu
def test_cuda_one_pass_scores_equal_embedding_then_classifying(tmp_path) -> None:
    """The CUDA path (pinned copies, per-part events, the head on the GPU, busy fraction) against
    the two-step path on the same GPU, fp32."""
    shard = _shard(tmp_path / "shard-000.parquet", 40, seed=9)
    want = _two_step(shard, tmp_path, device="cuda:0")
    result = score_shard(shard, _job(device="cuda:0", part_size=8), tmp_path / "scores")
    assert result.device == "cuda:0" and result.parts_written == 5
    assert 0.0 < result.busy_fraction <= 1.0 and result.models["esm2"].device_seconds > 0
    _assert_same(_scores(tmp_path / "scores"), want, atol=1e-5)  # other batch mixes: GPU reduction order
