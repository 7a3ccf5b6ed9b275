"""Embed-stage scaling over GPUs: the same synthetic data at 1, 2, 4, ... GPUs through `embed_all`.

For each model (ESM-2 3B and DNABERT-S by default, random weights of the real architectures) and
each GPU count n, the synthetic frames are stride-sharded into n shards over the length-sorted
order (as the pipeline shards) and embedded by `pipeline.embed.multigpu.coordinator.embed_all`, one worker
process per GPU. Reported per run:

- ``seconds``: the embed phase, from the first batch start to the last batch end over all
  workers (model loading and process start excluded; they are reported as ``startup_seconds``);
- ``tokens_per_s`` = tokens / seconds; ``speedup`` = tokens_per_s / tokens_per_s at 1 GPU;
  ``efficiency`` = speedup / n;
- ``max_worker_seconds``: the slowest worker's own embed-phase seconds;
- ``wall_seconds``: end to end, process start and model load included.

Workers line up (a barrier) after loading the model, tokenizing and planning their batches, so
that they start embedding together; load and tokenization skew between processes is startup, not
embedding. Goal on H200s: speedup >= 1.95 at 2 GPUs and >= 3.85 at 4.

Usage (GPU):   python benchmarks/gpu/scaling_device.py --out scaling.json [--gpus 0,1,2,3 | --max-gpus 4]
Usage (CPU):   python benchmarks/gpu/scaling_device.py --smoke --out /tmp/scaling.json

JSON (``--out``): ``{"schema": "virnucpro.scaling/1", "run_id", "started_at", "finished_at",
"environment": environment_info(), "config":
{...}, "results": [{model, kind, n_gpus, gpus, tokens, sequences, seconds, tokens_per_s, speedup,
efficiency, max_worker_seconds, startup_seconds, wall_seconds, precision, retries}], "runs": [...]}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

SCHEMA = "virnucpro.scaling/1"
AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_BARRIER_TIMEOUT_S = 300.0

GPU_DEFAULTS = {
    "esm2": {"model": "random:esm2_t36_3B_UR50D", "frames": 24000},
    "dnabert-s": {"model": "random:dnabert-s", "frames": 240000},
}
SMOKE_DEFAULTS = {
    "esm2": {"model": "random:esm2_t6_8M_UR50D", "frames": 48},
    "dnabert-s": {"model": "random:dnabert-s-tiny", "frames": 48},
}


def short_read_frame_table(n: int, seed: int = 0, full_aa: int = 166, full_fraction: float = 0.7):
    """Short-read frames like 500 bp chunks give: ``full_fraction`` full-length (166 aa / 499 nt),
    the rest uniform 20..165 aa (record ends). Returns a pyarrow table ``id, nucleotide, protein``."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    aa_len = np.where(rng.random(n) < full_fraction, full_aa, rng.integers(20, full_aa, n))
    ids, nts, prots = [], [], []
    for i, length in enumerate(aa_len):
        prots.append(AMINO_ACIDS[rng.integers(0, 20, length)].tobytes().decode())
        nts.append(BASES[rng.integers(0, 4, 3 * length + 1)].tobytes().decode())
        ids.append(f"synthetic_{i}_{i % 6 + 1}")
    return pa.table({"id": ids, "nucleotide": nts, "protein": prots})


def _start_line(barrier, worker: int, attempt: int) -> None:
    """Worker initializer: line the workers up so that they start their first batch together.

    Without it the embed window (first batch start to last batch end over all workers) would also
    measure how much later one worker finished loading and tokenizing than another. The wait is
    placed after the runner has planned its batches, the last step before its embed clock starts
    (`pipeline.embed.runner` looks ``plan_batches`` up at call time); if that hook is not there, the
    workers wait here instead, before loading. Retries (attempt > 0) never wait.
    """
    import torch

    import pipeline.embed.runner as embed

    if torch.cuda.is_available():
        # CUDA context and cuBLAS handle now, not inside the measured phase
        x = torch.ones(256, 256, device="cuda", dtype=torch.float16)
        (x @ x).sum().item()
    if attempt > 0:
        return

    def wait() -> None:
        try:
            barrier.wait(_BARRIER_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass  # a peer died or is late: run anyway (the coordinator retries failures)

    plan = getattr(embed, "plan_batches", None)
    if plan is None:
        wait()
        return

    def plan_then_wait(*args, **kwargs):
        result = plan(*args, **kwargs)
        embed.plan_batches = plan  # only the first shard of this worker waits
        wait()
        return result

    embed.plan_batches = plan_then_wait


def gpu_counts(n_visible: int, requested: str | None) -> list[int]:
    if requested:
        counts = sorted({int(c) for c in requested.split(",")})
    else:
        counts, c = [], 1
        while c <= n_visible:
            counts.append(c)
            c *= 2
        if n_visible and n_visible not in counts:
            counts.append(n_visible)
    bad = [c for c in counts if c < 1 or c > max(n_visible, 1)]
    if bad:
        raise SystemExit(f"--counts {bad} exceed the {n_visible} usable devices")
    return counts


def run_one(kind: str, model: str, table, n: int, gpus: list[int] | None, args, work: Path) -> dict[str, Any]:
    import multiprocessing

    from pipeline.core.config import EmbedConfig, EncoderConfig
    from pipeline.embed.multigpu.coordinator import embed_all
    from pipeline.prepare.shard import write_table_shards

    shard_dir = work / f"shards-{kind}-n{n}"
    shards = write_table_shards(table, n, shard_dir)  # the pipeline's sharding rule
    cfg = EmbedConfig(
        encoder=EncoderConfig(
            model=model, precision=args.precision, attention=args.attention, compile=args.compile
        ),
        device="cuda" if gpus else "cpu",
        token_budget=args.token_budget,
        num_workers=args.loader_workers,
        part_size=args.part_size,
        progress=False,
    )
    out_root = work / f"emb-{kind}-n{n}"
    barrier = multiprocessing.get_context("spawn").Barrier(n)
    started = time.time()
    summary = embed_all(
        shards,
        None,
        kind,
        cfg,
        gpus[:n] if gpus else None,
        out_root,
        n_workers=None if gpus else n,
        cpu_threads=1,  # equal CPU per worker at every n
        initializer=functools.partial(_start_line, barrier),
    )
    wall = time.time() - started
    workers = summary["workers"]
    seconds = summary["embed_window_seconds"] or max(w["embed_seconds"] for w in workers)
    row = {
        "model": model,
        "kind": kind,
        "n_gpus": n,
        "gpus": [w["device"] for w in workers],
        "tokens": summary["tokens"],
        "sequences": summary["sequences"],
        "seconds": round(seconds, 3),
        "tokens_per_s": round(summary["tokens"] / seconds, 1) if seconds else None,
        "max_worker_seconds": round(max(w["embed_seconds"] for w in workers), 3),
        "startup_seconds": round(max(w["seconds"] - w["embed_seconds"] for w in workers), 3),
        "wall_seconds": round(wall, 3),
        "precision": args.precision,
        "retries": summary["retries"],
        "worker_tokens": [w["tokens"] for w in workers],
    }
    if not args.keep:
        shutil.rmtree(out_root, ignore_errors=True)
        shutil.rmtree(shard_dir, ignore_errors=True)
    return {"row": row, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument(
        "--gpus", default=None, help="physical GPU indices to use, e.g. 0,1,2,3 (default: all visible)"
    )
    p.add_argument("--max-gpus", type=int, default=None, help="use at most this many visible GPUs")
    p.add_argument(
        "--counts", default=None, help="GPU counts to run, e.g. 1,2,4 (default: 1,2,4,... up to all)"
    )
    p.add_argument("--models", default="esm2,dnabert-s", help="kinds to run: esm2, dnabert-s")
    p.add_argument("--esm-model", default=None)
    p.add_argument("--dnabert-model", default=None)
    p.add_argument(
        "--esm-frames",
        type=int,
        default=None,
        help="synthetic frames for ESM-2 (3B default: ~50 s on 1 H200)",
    )
    p.add_argument("--dnabert-frames", type=int, default=None)
    p.add_argument("--precision", default=None, help="fp16 (GPU default) | bf16 | fp32 (smoke default)")
    p.add_argument("--attention", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--token-budget", type=int, default=None)
    p.add_argument("--part-size", type=int, default=4096)
    p.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers per GPU process")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep shards and embeddings in --work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="CPU, 1-2 worker processes, tiny models")
    args = p.parse_args(argv)

    import torch

    from pipeline.core.runinfo import environment_info, new_run_id, utc_now

    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    args.precision = args.precision or ("fp32" if args.smoke else "fp16")
    if args.smoke:
        gpus: list[int] | None = None
        n_visible = 2
        if args.part_size == 4096:
            args.part_size = 8
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible; use --smoke for the CPU check")
        gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else list(range(torch.cuda.device_count()))
        if args.max_gpus:
            gpus = gpus[: args.max_gpus]
        n_visible = len(gpus)
    counts = gpu_counts(n_visible, args.counts)
    models = {"esm2": args.esm_model, "dnabert-s": args.dnabert_model}
    frames = {"esm2": args.esm_frames, "dnabert-s": args.dnabert_frames}
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]

    config = {
        "smoke": args.smoke,
        "gpus": gpus,
        "counts": counts,
        "precision": args.precision,
        "attention": args.attention,
        "compile": args.compile,
        "token_budget": args.token_budget,
        "part_size": args.part_size,
        "seed": args.seed,
        "frames": {k: frames[k] or defaults[k]["frames"] for k in kinds},
    }
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []

    def write(environment: dict[str, Any]) -> None:
        # Written after every run, so a run cut short by a time limit still leaves its results.
        from pipeline.core.atomic import atomic_write_text

        doc = {
            "schema": SCHEMA,
            "run_id": run_id,
            "started_at": started_at,
            "finished_at": utc_now(),
            "environment": environment,
            "config": config,
            "goal": {"speedup_2": 1.95, "speedup_4": 3.85},
            "results": rows,
            "runs": runs,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(doc, indent=1, default=str))

    # Device facts are read at the end: reading the GPU name opens a CUDA context in this process,
    # which would take memory from GPU 0 while the workers size their batches.
    light_env = environment_info(with_device=False)
    run_id, started_at = f"scaling-{new_run_id()}", utc_now()
    work_ctx = tempfile.TemporaryDirectory(prefix="scaling-") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    try:
        for kind in kinds:
            model = models[kind] or defaults[kind]["model"]
            table = short_read_frame_table(frames[kind] or defaults[kind]["frames"], seed=args.seed)
            base = None
            for n in counts:
                print(f"[scaling] {kind} {model}: {n} device(s), {table.num_rows} frames", flush=True)
                try:
                    res = run_one(kind, model, table, n, gpus, args, work)
                except Exception as exc:  # noqa: BLE001 - record it and go on with the other runs
                    print(f"[scaling]   FAILED: {type(exc).__name__}: {exc}", flush=True)
                    rows.append(
                        {
                            "model": model,
                            "kind": kind,
                            "n_gpus": n,
                            "tokens": None,
                            "seconds": None,
                            "tokens_per_s": None,
                            "speedup": None,
                            "efficiency": None,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
                    write(light_env)
                    continue
                row = res["row"]
                if n == 1:
                    base = row["tokens_per_s"]
                row["speedup"] = (
                    round(row["tokens_per_s"] / base, 3) if base and row["tokens_per_s"] else None
                )
                row["efficiency"] = round(row["speedup"] / n, 3) if row["speedup"] else None
                rows.append(row)
                runs.append(res["summary"])
                write(light_env)
                print(
                    f"[scaling]   {row['tokens_per_s']} tok/s over {row['seconds']} s "
                    f"(speedup {row['speedup']}, wall {row['wall_seconds']} s)",
                    flush=True,
                )
    finally:
        if work_ctx:
            work_ctx.cleanup()
    write(environment_info())

    print(
        f"\n{'model':<28} {'n':>2} {'tokens':>10} {'embed s':>8} {'tok/s':>11} {'speedup':>7} "
        f"{'eff':>5} {'startup s':>9} {'wall s':>7}"
    )
    for r in rows:
        if r.get("error"):
            print(f"{r['model']:<28} {r['n_gpus']:>2}  FAILED: {r['error'][:80]}")
            continue
        print(
            f"{r['model']:<28} {r['n_gpus']:>2} {r['tokens']:>10} {r['seconds']:>8.2f} "
            f"{r['tokens_per_s'] or 0:>11.1f} {r['speedup'] or 0:>7.3f} {r['efficiency'] or 0:>5.2f} "
            f"{r['startup_seconds']:>9.2f} {r['wall_seconds']:>7.2f}"
        )
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
