"""End-to-end `virnucpro predict` on 1 GPU and on all visible GPUs, cold and warm compile cache.

Generates a seeded read set (default 200,000 reads of 150 bp: 75 % made of sense codons in the
first forward frame, so that frame is stop-free, the rest uniform random bases), then runs
``virnucpro predict`` with default options and the real architectures' random weights
(``--esm-model random:esm2_t36_3B_UR50D --dnabert-model random:dnabert-s --classifier random``)
as a user would, in a subprocess, for each GPU count twice: once with an empty compile cache
(``cold``) and once more with the cache the first run left (``warm``). Per run it records the wall
time, the seconds of each stage (from the run record), tokens/s per model (tokens over that
model's device seconds), the workers' GPU busy fraction (CUDA events, first to last batch), the
spread between the workers' finish times, and whether the labels equal the 1-GPU run's.

Usage (GPU):  python benchmarks/gpu/e2e_device.py --out benchmarks/results/e2e_h200x2.json
              [--reads 200000] [--counts 1,2] [--caches cold,warm]
Usage (CPU):  python benchmarks/gpu/e2e_device.py --smoke --out /tmp/e2e.json

JSON (``--out``, ingested by ``virnucpro ingest`` as a device benchmark: every numeric leaf is a
metric row named by its path, e.g. ``runs[n2/warm].wall_s``):
``{"benchmark": "e2e_device", "schema_version": 1, "run_id", "started_at", "finished_at",
"environment": {host, versions, device_name, device_count, ...}, "config": {...},
"input": {reads, read_length, seed, frames, tokens: {esm2, dnabert-s}},
"runs": [{"name": "n<gpus>/<cache>", "n_gpus", "cache", "wall_s", "exit_code",
"stages": {"prepare": s, "shard": s, "workers": s, "classify": s, "merge": s},
"models": {"esm2": {"tokens", "device_s": [per worker], "tokens_per_s", "tokens_per_s_per_gpu"}, ...},
"gpu_busy_fraction": {"min", "mean"}, "finish_spread_s", "finish_spread_pct",
"labels": {"frames", "identical_to_n1", "max_score_diff_vs_n1", "sha256"}}],
"scaling": {"wall_n<k>_over_n1": x, ...}, "goals": {...}}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

BENCHMARK = "e2e_device"
SENSE_CODONS = [
    a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in {"TAA", "TAG", "TGA"}
]
GPU_MODELS = {"esm": "random:esm2_t36_3B_UR50D", "dnabert": "random:dnabert-s"}
SMOKE_MODELS = {"esm": "random:esm2_t6_8M_UR50D", "dnabert": "random:dnabert-s-tiny"}
GOALS = {
    "wall_s_n1": 150.0,
    "wall_s_n2": 80.0,
    "scaling_n2": 1.9,
    "dnabert_tokens_per_s": 1.0e6,
    "warm_compile_overhead_s_per_worker": 5.0,
}


def make_reads(n: int, length: int, seed: int, coding_fraction: float = 0.75) -> list[tuple[str, str]]:
    """``n`` seeded reads: a ``coding_fraction`` share of random sense codons (frame 1 stop-free),
    the rest uniform random bases. Returns ``(id, sequence)`` pairs."""
    rng = np.random.default_rng(seed)
    codons = np.array(SENSE_CODONS)
    bases = np.array(list("ACGT"))
    coding = rng.random(n) < coding_fraction
    reads = []
    n_codons = (length + 2) // 3
    for i in range(n):
        if coding[i]:
            seq = "".join(codons[rng.integers(0, len(codons), n_codons)])[:length]
        else:
            seq = "".join(bases[rng.integers(0, 4, length)])
        reads.append((f"read{i:07d}", seq))
    return reads


def write_fasta(path: Path, reads: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="ascii") as fh:
        for name, seq in reads:
            fh.write(f">{name}\n{seq}\n")
    return path


def _labels(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(frame ids, labels, virus scores) of prediction_results.txt."""
    ids, labels, scores = [], [], []
    with open(out / "prediction_results.txt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            fid, label, _s1, s2 = line.rstrip("\n").split("\t")
            ids.append(fid)
            labels.append(label)
            scores.append(float(s2))
    return ids, np.array(labels), np.array(scores, dtype=np.float64)


def _stage_seconds(record: dict[str, Any]) -> dict[str, float]:
    """Wall seconds per stage: prepare, shard, workers (every GPU worker, process start to last
    part), classify, merge; from the run record."""
    out: dict[str, float] = {}
    for row in record.get("stages", []):
        name = row.get("stage")
        if name in ("prepare", "shard", "classify", "merge"):
            out[name] = round(out.get(name, 0.0) + float(row.get("seconds") or 0.0), 3)
    workers = record.get("workers") or {}
    if workers.get("wall_seconds") is not None:
        out["workers"] = round(float(workers["wall_seconds"]), 3)
    return out


def _models(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model: tokens, device seconds per worker, ``tokens_per_s`` (all tokens over the slowest
    worker's device seconds: the throughput of the whole machine) and ``tokens_per_s_per_gpu``."""
    out: dict[str, dict[str, Any]] = {}
    for row in record.get("stages", []):
        if row.get("stage") != "embed":
            continue
        m = out.setdefault(str(row.get("kind")), {"tokens": 0, "device_s": []})
        m["tokens"] += int(row.get("tokens") or 0)
        m["device_s"].append(round(float(row.get("device_seconds") or 0.0), 3))
    for m in out.values():
        slowest, total = max(m["device_s"], default=0.0), sum(m["device_s"])
        m["tokens_per_s"] = round(m["tokens"] / slowest, 1) if slowest else None
        m["tokens_per_s_per_gpu"] = round(m["tokens"] / total, 1) if total else None
    return out


def run_predict(
    fasta: Path,
    out: Path,
    gpus: list[int] | None,
    models: dict[str, str],
    cache: Path,
    extra: list[str],
    log_path: Path,
) -> tuple[float, int]:
    args = [
        sys.executable,
        "-c",
        "import sys; from pipeline.cli import main; main(sys.argv[1:])",
        "predict",
        str(fasta),
        "-o",
        str(out),
        "--esm-model",
        models["esm"],
        "--dnabert-model",
        models["dnabert"],
        "--classifier",
        "random",
    ]
    if gpus:
        args += ["--gpus", ",".join(map(str, gpus))]
    args += extra
    env = {**os.environ, "VIRNUCPRO_COMPILE_CACHE": str(cache), "VIRNUCPRO_PROGRESS": "0"}
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.call(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2]
        )
    return time.perf_counter() - t0, code


def summarise(name: str, n: int, cache: str, wall: float, code: int, out: Path) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "n_gpus": n,
        "cache": cache,
        "wall_s": round(wall, 3),
        "exit_code": code,
    }
    record_path = out / "run_record.json"
    if code != 0 or not record_path.is_file():
        return row
    record = json.loads(record_path.read_text())
    row["stages"] = _stage_seconds(record)
    row["models"] = _models(record)
    workers = (record.get("workers") or {}).get("per_worker") or []
    busy = [w.get("gpu_busy_fraction") for w in workers if w.get("gpu_busy_fraction") is not None]
    row["gpu_busy_fraction"] = (
        {"min": round(min(busy), 4), "mean": round(sum(busy) / len(busy), 4)} if busy else None
    )
    row["finish_spread_s"] = (record.get("workers") or {}).get("finish_spread_seconds")
    window = (record.get("workers") or {}).get("embed_window_seconds")
    row["finish_spread_pct"] = (
        round(100 * row["finish_spread_s"] / window, 2)
        if row["finish_spread_s"] is not None and window
        else None
    )
    row["load_s_max"] = max((float(w.get("load_seconds") or 0) for w in workers), default=None)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--reads", type=int, default=None, help="reads to generate (default 200000; smoke 60)")
    p.add_argument("--read-length", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--counts", default=None, help="GPU counts, e.g. 1,2 (default: 1 and all visible)")
    p.add_argument(
        "--caches", default="cold,warm", help="cold, warm or both (warm reuses the cold run's cache)"
    )
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the run directories in --work")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models, a few reads")
    p.add_argument("--extra", default="", help="more predict options, e.g. '--compile'")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="this script's JSON from a 1-GPU machine: adds the scaling ratio and the label check against it",
    )
    args = p.parse_args(argv)

    from pipeline.core.runinfo import environment_info, new_run_id, utc_now

    models = SMOKE_MODELS if args.smoke else GPU_MODELS
    reads_n = args.reads or (60 if args.smoke else 200_000)
    if args.smoke:
        visible = 0
        counts = [0]
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible; use --smoke for the CPU check")
        visible = torch.cuda.device_count()
        counts = sorted({int(c) for c in args.counts.split(",")}) if args.counts else sorted({1, visible})
        if any(c < 1 or c > visible for c in counts):
            raise SystemExit(f"--counts {counts}: this machine shows {visible} GPU(s)")
    caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    run_id, started_at = f"e2e-{new_run_id()}", utc_now()
    work_ctx = tempfile.TemporaryDirectory(prefix="e2e-") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)
    fasta = write_fasta(work / "reads.fa", make_reads(reads_n, args.read_length, args.seed))
    config = {
        "smoke": args.smoke,
        "reads": reads_n,
        "read_length": args.read_length,
        "seed": args.seed,
        "counts": counts,
        "caches": caches,
        "models": models,
        "classifier": "random",
        "extra": args.extra,
        "visible_gpus": visible,
    }
    runs: list[dict[str, Any]] = []
    input_info: dict[str, Any] = {"reads": reads_n, "read_length": args.read_length, "seed": args.seed}
    reference: tuple[list[str], np.ndarray, np.ndarray] | None = None

    def write(environment: dict[str, Any]) -> None:
        from pipeline.core.atomic import atomic_write_text

        scaling: dict[str, Any] = {}
        warm = {
            r["n_gpus"]: r["wall_s"] for r in runs if r.get("cache") == caches[-1] and r.get("exit_code") == 0
        }
        digests = {(r.get("labels") or {}).get("sha256") for r in runs if r.get("labels")}
        if args.baseline is not None:
            base = json.loads(args.baseline.read_text())
            base_runs = [r for r in base.get("runs", []) if r.get("n_gpus") == 1 and r.get("exit_code") == 0]
            base_warm = [r["wall_s"] for r in base_runs if r.get("cache") == "warm"] or [
                r["wall_s"] for r in base_runs
            ]
            if base_warm and 1 not in warm:
                warm[1] = base_warm[-1]
                scaling["n1_from"] = str(args.baseline)
            base_digests = {(r.get("labels") or {}).get("sha256") for r in base_runs if r.get("labels")}
            if base.get("config", {}).get("reads") == reads_n and base_digests and digests:
                scaling["labels_identical_to_n1"] = int(base_digests == digests and len(digests) == 1)
        if 1 in warm:
            for n, wall in warm.items():
                if n != 1:
                    scaling[f"wall_n{n}_over_n1"] = round(warm[1] / wall, 3)
        doc = {
            "benchmark": BENCHMARK,
            "schema_version": 1,
            "run_id": run_id,
            "started_at": started_at,
            "finished_at": utc_now(),
            "environment": environment,
            "config": config,
            "input": input_info,
            "runs": runs,
            "scaling": scaling,
            "goals": GOALS,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(doc, indent=1, default=str))

    env = environment_info(with_device=False)
    try:
        for n in counts:
            cache_dir = work / f"compile-cache-n{n}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            for cache in caches:
                name = f"n{n}/{cache}"
                out = work / f"run-n{n}-{cache}"
                shutil.rmtree(out, ignore_errors=True)
                gpus = list(range(n)) if n else None
                print(f"[e2e] {name}: predict on {n or 'CPU'} GPU(s), {reads_n} reads", flush=True)
                wall, code = run_predict(
                    fasta, out, gpus, models, cache_dir, args.extra.split(), work / f"run-n{n}-{cache}.log"
                )
                row = summarise(name, n, cache, wall, code, out)
                if code != 0:
                    tail = (work / f"run-n{n}-{cache}.log").read_text(errors="replace")[-1500:]
                    row["error"] = tail
                    print(f"[e2e]   FAILED (exit {code}):\n{tail}", flush=True)
                else:
                    ids, labels, scores = _labels(out)
                    digest = hashlib.sha256(
                        "\n".join(f"{i}\t{x}" for i, x in zip(ids, labels)).encode()
                    ).hexdigest()
                    row["labels"] = {"frames": len(ids), "sha256": digest}
                    if reference is None:
                        reference = (ids, labels, scores)
                    elif reference[0] == ids:
                        row["labels"]["identical_to_first"] = int((reference[1] == labels).sum())
                        row["labels"]["max_score_diff_vs_first"] = (
                            float(np.abs(reference[2] - scores).max()) if len(ids) else 0.0
                        )
                    record = json.loads((out / "run_record.json").read_text())
                    input_info["frames"] = record.get("counts", {}).get("frames")
                    input_info["tokens"] = {k: m["tokens"] for k, m in row.get("models", {}).items()}
                    print(
                        f"[e2e]   wall {wall:.1f} s, stages {row.get('stages')}, "
                        f"busy {row.get('gpu_busy_fraction')}, spread {row.get('finish_spread_s')} s",
                        flush=True,
                    )
                runs.append(row)
                write(env)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        if work_ctx:
            work_ctx.cleanup()
    write(environment_info())

    print(
        f"\n{'run':<10} {'wall s':>7} {'prep':>6} {'shard':>6} {'workers':>8} {'classify':>8} {'merge':>6} "
        f"{'DNABERT tok/s':>13} {'ESM-2 tok/s':>12} {'busy':>6} {'spread%':>7} {'labels=':>8}"
    )
    for r in runs:
        st = r.get("stages") or {}
        md = r.get("models") or {}
        busy = (r.get("gpu_busy_fraction") or {}).get("min")
        same = (r.get("labels") or {}).get("identical_to_first")
        print(
            f"{r['name']:<10} {r['wall_s']:>7.1f} {st.get('prepare', 0):>6.1f} {st.get('shard', 0):>6.1f} "
            f"{st.get('workers', 0):>8.1f} {st.get('classify', 0):>8.1f} {st.get('merge', 0):>6.1f} "
            f"{(md.get('dnabert-s') or {}).get('tokens_per_s') or 0:>13,.0f} "
            f"{(md.get('esm2') or {}).get('tokens_per_s') or 0:>12,.0f} "
            f"{busy if busy is not None else float('nan'):>6.3f} "
            f"{r.get('finish_spread_pct') if r.get('finish_spread_pct') is not None else float('nan'):>7.2f} "
            f"{same if same is not None else '-':>8}"
        )
    return 1 if any(r.get("exit_code") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
