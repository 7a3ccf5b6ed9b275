"""Multi-process embedding coordinator: retries, redistribution, output checks.

The slow tests run real worker processes on CPU with the tiny random ESM-2 (the coordinator does
not depend on the model kind; DNABERT-S goes through the same code, see the scaling smoke run) and
compare every vector with a single-process `embed_shard` run over the same rows ("the clean run").

Faults are injected through the coordinator's public hooks only: ``on_worker_start`` hands the test
each worker's pid (to SIGKILL it), and ``initializer`` runs a function from this module inside the
worker, which wraps the encoder so that it slows down or raises.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import EmbedConfig, EncoderConfig
from pipeline.core.errors import Interrupted, OutputIntegrityError
from pipeline.embed.multigpu.coordinator import (
    WorkerEvent,
    check_outputs,
    embed_all,
    salvage_parts,
    write_remaining_subshards,
)
from pipeline.prepare.shard import write_table_shards

AMINO = "ACDEFGHIKLMNPQRSTVWY"
ESM = "random:esm2_t6_8M_UR50D"


# ----------------------------------------------------------------------------------------------
# data


def _frames(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 40, n)
    protein = ["".join(rng.choice(list(AMINO), int(k))) for k in lengths]
    nucleotide = ["".join(rng.choice(list("ACGT"), 3 * int(k) + 1)) for k in lengths]
    return pa.table(
        {"id": [f"rec{i}_F{i % 3 + 1}" for i in range(n)], "nucleotide": nucleotide, "protein": protein}
    )


def _cfg(model: str, **kw) -> EmbedConfig:
    return EmbedConfig(
        encoder=EncoderConfig(model),
        device="cpu",
        token_budget=64,
        num_workers=0,
        part_size=2,
        progress=False,
        **kw,
    )


def _vectors(dirs) -> dict[str, np.ndarray]:
    from pipeline.embed.parts import open_embeddings

    emb = open_embeddings([Path(d) for d in dirs])
    vectors = np.asarray(emb.vectors)
    return {i: vectors[r] for r, i in enumerate(emb.ids.tolist())}


def _clean_run(
    table: pa.Table, kind: str, model: str, tmp: Path, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """The reference: this process, one device, one shard holding every row.

    ``device`` must be of the same type as the workers': ``random:`` weights come from that
    device's random generator, so CPU and CUDA draw different weights from the same seed.
    """
    import torch

    from pipeline.embed.runner import embed_shard

    torch.set_num_threads(1)
    shard = tmp / "all.parquet"
    pq.write_table(table, shard)
    embed_shard(shard, None, kind, replace(_cfg(model), device=device), tmp / "clean")
    return _vectors([tmp / "clean"])


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for i, v in want.items():
        np.testing.assert_allclose(got[i], v, rtol=1e-4, atol=1e-5, err_msg=i)


# ----------------------------------------------------------------------------------------------
# fault injection (run inside worker processes through ``initializer``)


def _wrap_encoder(hook) -> None:
    """Make every encoder loaded in this worker call ``hook(batch_number)`` before each batch."""
    import pipeline.models.registry as registry

    original = registry.load_encoder

    def load(*args, **kwargs):
        encoder = original(*args, **kwargs)
        inner = encoder.embed_packed
        calls = [0]

        def embed_packed(*a, **k):
            calls[0] += 1
            hook(calls[0])
            return inner(*a, **k)

        encoder.embed_packed = embed_packed
        return encoder

    registry.load_encoder = load


def park_after_first_part(out_dirs: dict[int, str], gate_dir: str, worker: int, attempt: int) -> None:
    """The point of interest: once its first part is on disk, worker k (first attempt only) creates
    ``gate_dir/reached-<k>`` and its part writer waits for ``gate_dir/go`` (or a kill); the worker's
    loop stalls behind the writer with parts still to do."""
    import torch

    import pipeline.embed.runner as runner

    torch.set_num_threads(1)
    if worker not in out_dirs or attempt > 0:
        return
    out, gate = Path(out_dirs[worker]), Path(gate_dir)
    write_part = runner.write_part

    def gated(*args, **kwargs):
        marker = write_part(*args, **kwargs)
        if not (gate / f"reached-{worker}").exists() and any(out.glob("part-*.done")):
            (gate / f"reached-{worker}").touch()
            while not (gate / "go").exists():
                time.sleep(0.005)
        return marker

    runner.write_part = gated


def worker1_keeps_failing(worker: int, attempt: int) -> None:
    import torch

    torch.set_num_threads(1)
    if worker != 1:
        return
    limit = 3 if attempt == 0 else 0  # first attempt writes a few parts, then every run fails

    def hook(n: int) -> None:
        if n > limit:
            raise RuntimeError(f"simulated device fault (batch {n}, attempt {attempt})")

    _wrap_encoder(hook)


def _when_parked(files: list[Path], action, timeout: float = 240.0) -> None:
    """Run ``action`` in a thread once every file exists (the workers wrote them where they wait)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(f.exists() for f in files):
                action()
                return
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


# ----------------------------------------------------------------------------------------------
# fast tests: no worker processes


def _write_dir(directory: Path, ids_per_part: list[list[str]], *, complete: bool, dim: int = 4) -> None:
    from pipeline.embed.parts import FORMAT, write_metadata, write_part

    rows = 0
    for p, ids in enumerate(ids_per_part):
        vectors = np.arange(len(ids) * dim, dtype=np.float32).reshape(len(ids), dim) + 100 * p
        write_part(directory, p, ids, vectors, "fp")
        rows += len(ids)
    write_metadata(
        directory,
        {
            "format": FORMAT,
            "kind": "esm2",
            "model": ESM,
            "repr_layer": 6,
            "hidden_size": dim,
            "precision": "fp32",
            "dtype": "float32",
            "fingerprint": "fp",
            "n_rows": rows,
            "n_parts": len(ids_per_part),
            "complete": complete,
        },
    )


def test_check_outputs_names_missing_and_duplicated_ids(tmp_path: Path) -> None:
    _write_dir(tmp_path / "a", [["x1", "x2"], ["x3"]], complete=True)
    _write_dir(tmp_path / "b", [["x3", "x4"]], complete=True)
    with pytest.raises(OutputIntegrityError) as err:
        check_outputs(["x1", "x2", "x3", "x4", "x5"], [tmp_path / "a", tmp_path / "b"])
    assert "1 missing id(s): x5" in str(err.value)
    assert "1 duplicated id(s): x3" in str(err.value)
    assert check_outputs(["x1", "x2", "x3"], [tmp_path / "a"]) == {"ids": 3, "dirs": 1}


def test_check_outputs_refuses_an_unfinished_directory(tmp_path: Path) -> None:
    _write_dir(tmp_path / "a", [["x1"]], complete=False)
    with pytest.raises(OutputIntegrityError, match="incomplete"):
        check_outputs(["x1"], [tmp_path / "a"])


def test_salvage_keeps_only_valid_parts_as_a_complete_directory(tmp_path: Path) -> None:
    from pipeline.embed.parts import PartFiles, open_embeddings

    _write_dir(tmp_path / "partial", [["a", "b"], ["c", "d"], ["e"]], complete=False)
    PartFiles(tmp_path / "partial", 1).marker.unlink()  # part 1 was being written when it died
    kept = salvage_parts(tmp_path / "partial", tmp_path / "kept")
    assert kept == ["a", "b", "e"]
    emb = open_embeddings(tmp_path / "kept")
    assert emb.ids.tolist() == ["a", "b", "e"]
    np.testing.assert_array_equal(emb.lookup(["e"])[0], np.arange(4, dtype=np.float32) + 200)
    assert salvage_parts(tmp_path / "missing", tmp_path / "none") == []


def test_remaining_rows_are_split_by_stride_in_shard_order(tmp_path: Path) -> None:
    shard = tmp_path / "shard-001.parquet"
    pq.write_table(
        pa.table({"id": [f"s{i}" for i in range(9)], "nucleotide": ["ACG"] * 9, "protein": ["M"] * 9}), shard
    )
    paths = write_remaining_subshards(shard, {"s0", "s4"}, 3, tmp_path / "re", "shard-001")
    got = [pq.read_table(p).column("id").to_pylist() for p in paths]
    assert [p.name for p in paths] == ["shard-001.r0.parquet", "shard-001.r1.parquet", "shard-001.r2.parquet"]
    assert got == [["s1", "s5", "s8"], ["s2", "s6"], ["s3", "s7"]]
    assert write_remaining_subshards(shard, {f"s{i}" for i in range(8)}, 3, tmp_path / "re2", "x") == [
        tmp_path / "re2" / "x.r0.parquet"
    ]


# ----------------------------------------------------------------------------------------------
# worker processes (slow: each worker imports torch)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkilled_worker_is_retried_and_matches_a_clean_run(tmp_path: Path) -> None:
    table = _frames(24)
    shards = write_table_shards(table, 2, tmp_path / "shards")
    events: list[WorkerEvent] = []
    gate = tmp_path / "gate"
    gate.mkdir()

    def on_start(ev: WorkerEvent) -> None:
        events.append(ev)
        if ev.worker == 0 and ev.attempt == 0:
            _when_parked([gate / "reached-0"], lambda: os.kill(ev.pid, signal.SIGKILL))

    summary = embed_all(
        shards,
        None,
        "esm2",
        _cfg(ESM),
        None,
        tmp_path / "out",
        n_workers=2,
        on_worker_start=on_start,
        initializer=functools.partial(
            park_after_first_part, {0: str(tmp_path / "out" / "shard-000")}, str(gate)
        ),
    )

    w0 = summary["workers"][0]
    assert w0["failures"] == 1 and w0["retries"] == 1 and w0["healthy"]
    assert "signal 9" in w0["errors"][0]
    assert summary["redistributions"] == []
    assert [(e.worker, e.attempt) for e in events].count((0, 1)) == 1
    retry = next(r for r in summary["records"] if r["config"]["shard_path"].endswith("shard-000.parquet"))
    assert retry["stages"][0]["parts_skipped"] >= 1, "the retry must keep the parts written before the kill"
    worker_log = (tmp_path / "out" / "logs" / "worker-0.log").read_text()
    # the killed attempt and its retry both log to the worker's one file
    assert (
        "task shard-000 attempt 0 on cpu" in worker_log
        and "task shard-000 attempt 1 finished: ok" in worker_log
    )
    _assert_same(_vectors(summary["output_dirs"]), _clean_run(table, "esm2", ESM, tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failing_worker_is_retired_and_its_rows_redistributed(tmp_path: Path) -> None:
    table = _frames(24, seed=2)
    shards = write_table_shards(table, 2, tmp_path / "shards")

    summary = embed_all(
        shards,
        None,
        "esm2",
        _cfg(ESM),
        None,
        tmp_path / "out",
        n_workers=2,
        max_retries=1,
        initializer=worker1_keeps_failing,
    )

    w1 = summary["workers"][1]
    assert not w1["healthy"] and w1["failures"] == 2 and w1["retries"] == 1
    assert "simulated device fault" in w1["errors"][-1]
    (move,) = summary["redistributions"]
    assert move["task"] == "shard-001" and move["kept"] >= 2 and move["remaining"] >= 1
    assert move["kept"] + move["remaining"] == 12
    assert "shard-001.r0" in summary["workers"][0]["tasks"]
    assert not (tmp_path / "out" / "shard-001").exists()
    _assert_same(_vectors(summary["output_dirs"]), _clean_run(table, "esm2", ESM, tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_workers_and_resume_completes(tmp_path: Path) -> None:
    table = _frames(16, seed=3)
    shards = write_table_shards(table, 2, tmp_path / "shards")
    pids: list[int] = []
    gate = tmp_path / "gate"
    gate.mkdir()
    out_dirs = {k: str(tmp_path / "out" / f"shard-{k:03d}") for k in (0, 1)}

    def stop_then_release() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # both workers are parked with parts still to do
        (gate / "go").touch()

    _when_parked([gate / "reached-0", gate / "reached-1"], stop_then_release)

    with pytest.raises(Interrupted):
        embed_all(
            shards,
            None,
            "esm2",
            _cfg(ESM),
            None,
            tmp_path / "out",
            n_workers=2,
            on_worker_start=lambda ev: pids.append(ev.pid),
            initializer=functools.partial(park_after_first_part, out_dirs, str(gate)),
        )
    for pid in pids:  # every worker has exited (and was reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    summary = embed_all(shards, None, "esm2", _cfg(ESM, resume=True), None, tmp_path / "out", n_workers=2)
    assert sum(r["stages"][0]["parts_skipped"] for r in summary["records"]) >= 1
    _assert_same(_vectors(summary["output_dirs"]), _clean_run(table, "esm2", ESM, tmp_path))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_error_no_retry_can_fix_stops_the_run_at_once(tmp_path: Path) -> None:
    from pipeline.core.errors import ModelLoadError

    shards = write_table_shards(_frames(4), 1, tmp_path / "shards")
    events: list[WorkerEvent] = []
    with pytest.raises(ModelLoadError, match="worker 0 .*random:esm2_no_such_model"):
        embed_all(
            shards,
            None,
            "esm2",
            _cfg("random:esm2_no_such_model"),
            None,
            tmp_path / "out",
            n_workers=1,
            on_worker_start=events.append,
        )
    assert len(events) == 1  # not retried


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_worker_runs_on_exactly_the_gpu_it_was_given(tmp_path: Path) -> None:
    import torch

    gpus = list(range(torch.cuda.device_count()))[-2:]  # the last ones: not the default device 0
    table = _frames(16, seed=4)
    shards = write_table_shards(table, len(gpus), tmp_path / "shards")
    summary = embed_all(shards, None, "esm2", _cfg(ESM), gpus, tmp_path / "out")
    assert [w["device"] for w in summary["workers"]] == [f"cuda:{g}" for g in gpus]
    assert sorted(r["stages"][0]["device"] for r in summary["records"]) == sorted(f"cuda:{g}" for g in gpus)
    want = _clean_run(table, "esm2", ESM, tmp_path, device=f"cuda:{gpus[0]}")
    got = _vectors(summary["output_dirs"])
    for i, v in want.items():
        np.testing.assert_allclose(got[i], v, rtol=1e-3, atol=1e-3, err_msg=i)
