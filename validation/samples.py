"""Synthetic result files of every ingestible kind, in the real on-disk formats.

Used by the tests and to render an example report (``docs/report-screenshot.png``); the numbers
are made up and say nothing about real performance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text


def _env(day: int, device: str = "NVIDIA H200", count: int = 1, commit: str = "a" * 40) -> dict[str, Any]:
    return {
        "host": "gpu-host-1",
        "git_commit": commit,
        "time": f"2026-11-{day:02d}T02:00:00+00:00",
        "versions": {"python": "3.12.3", "torch": "2.11.0+cu130", "virnucpro": "0.1.0"},
        "device_name": device,
        "device_count": count,
        "cuda": "13.0",
    }


def run_record(
    day: int = 20,
    esm_tps: float = 72000.0,
    dnabert_tps: float = 310000.0,
    run_id: str | None = None,
    commit: str = "a" * 40,
) -> dict[str, Any]:
    """A ``virnucpro.run/1`` predict record with one row per stage."""
    env = _env(day, commit=commit)
    stages = [
        {
            "stage": "prepare",
            "model": None,
            "seconds": 4.0,
            "sequences": 20000,
            "tokens": None,
            "tokens_per_s": None,
            "packing_efficiency": None,
            "backend": None,
            "precision": None,
            "device": "cpu",
        },
        {
            "stage": "embed",
            "model": "zhihan1996/DNABERT-S",
            "seconds": 3.1e7 / dnabert_tps,
            "sequences": 120000,
            "tokens": 31000000,
            "tokens_per_s": dnabert_tps,
            "packing_efficiency": 0.982,
            "backend": "flash-attn",
            "precision": "fp16",
            "device": "cuda:0",
        },
        {
            "stage": "embed",
            "model": "esm2_t36_3B_UR50D",
            "seconds": 1.9e7 / esm_tps,
            "sequences": 120000,
            "tokens": 19000000,
            "tokens_per_s": esm_tps,
            "packing_efficiency": 0.974,
            "backend": "torch-varlen",
            "precision": "fp16",
            "device": "cuda:0",
        },
        {
            "stage": "classify",
            "model": "random",
            "seconds": 2.5,
            "sequences": 120000,
            "tokens": None,
            "tokens_per_s": None,
            "packing_efficiency": None,
            "backend": None,
            "precision": "fp32",
            "device": "cuda:0",
        },
        {
            "stage": "merge",
            "model": None,
            "seconds": 1.5,
            "sequences": 20000,
            "tokens": None,
            "tokens_per_s": None,
            "packing_efficiency": None,
            "backend": None,
            "precision": None,
            "device": "cpu",
        },
    ]
    return {
        "schema": "virnucpro.run/1",
        "run_id": run_id or f"2026{11:02d}{day:02d}T020000Z-sample{day:02d}",
        "kind": "predict",
        "started_at": env["time"],
        "finished_at": env["time"],
        "environment": env,
        "config": {"chunk_size": 500, "gpus": [0]},
        "stages": stages,
    }


def validate_doc(day: int = 20, seed: int = 0, n: int = 200) -> dict[str, Any]:
    """A ``virnucpro.validate/1`` document with fp16/bf16/packing comparisons."""
    rng = random.Random(seed)
    results = []
    for model in ("esm2_t36_3B_UR50D", "zhihan1996/DNABERT-S"):
        for comparison, precision, scale in (
            ("precision", "fp16", 2e-6),
            ("precision", "bf16", 4e-5),
            ("packing", "fp32", 1e-9),
        ):
            cos = [1.0 - abs(rng.gauss(0, scale)) for _ in range(n)]
            ordered = sorted(cos)
            results.append(
                {
                    "comparison": comparison,
                    "model": model,
                    "precision": precision,
                    "backend": "sdpa",
                    "n": n,
                    "cos_min": ordered[0],
                    "cos_p001": ordered[0],
                    "cos_mean": sum(cos) / n,
                    "rel_l2_max": scale * 30,
                    "max_abs": scale * 50,
                    "label_agreement": 1.0,
                    "chunk_label_agreement": 1.0,
                    "passed": True,
                    "cosines": cos,
                }
            )
    env = _env(day)
    return {
        "schema": "virnucpro.validate/1",
        "run_id": f"validate-sample-{day:02d}",
        "started_at": env["time"],
        "finished_at": env["time"],
        "environment": env,
        "config": {"n": n},
        "thresholds": {"min_cosine": 0.999, "min_label_agreement": 0.999},
        "passed": True,
        "results": results,
    }


def pytest_benchmark_doc(day: int = 20, slow: float = 1.0) -> dict[str, Any]:
    """A pytest-benchmark ``--benchmark-json`` file with two benchmarks."""

    def bench(name: str, group: str, median: float) -> dict[str, Any]:
        median *= slow
        return {
            "group": group,
            "name": name,
            "fullname": f"benchmarks/bench_pipeline.py::{name}",
            "params": None,
            "param": None,
            "extra_info": {"tokens": 1000},
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5},
            "stats": {
                "min": median * 0.95,
                "max": median * 1.2,
                "mean": median * 1.02,
                "stddev": median * 0.05,
                "rounds": 5,
                "median": median,
                "iqr": median * 0.04,
                "q1": median * 0.98,
                "q3": median * 1.02,
                "iqr_outliers": 0,
                "stddev_outliers": 1,
                "outliers": "1;0",
                "ld15iqr": median * 0.95,
                "hd15iqr": median * 1.2,
                "ops": 1.0 / median,
                "total": median * 5,
                "iterations": 1,
            },
        }

    return {
        "machine_info": {
            "node": "ci-host",
            "processor": "x86_64",
            "machine": "x86_64",
            "python_implementation": "CPython",
            "python_version": "3.11.9",
            "release": "6.1.0",
            "system": "Linux",
            "cpu": {"brand_raw": "Example CPU"},
        },
        "commit_info": {
            "id": "b" * 40,
            "time": f"2026-11-{day:02d}T01:00:00+00:00",
            "author_time": "",
            "dirty": False,
            "project": "virnucpro",
            "branch": "main",
        },
        "benchmarks": [
            bench("test_pipeline_end_to_end", "pipeline", 0.80),
            bench("test_packing_plan", "packing", 0.012),
        ],
        "datetime": f"2026-11-{day:02d}T01:00:00.000000+00:00",
        "version": "5.3.1",
    }


def scaling_doc(day: int = 20) -> dict[str, Any]:
    """A multi-GPU scaling JSON: tokens/s at 1, 2 and 4 GPUs."""
    rows = []
    for n, eff in ((1, 1.0), (2, 0.97), (4, 0.93)):
        rows.append(
            {
                "model": "esm2_t36_3B_UR50D",
                "n_gpus": n,
                "tokens_per_s": 72000.0 * n * eff,
                "speedup": n * eff,
                "efficiency": eff,
            }
        )
    return {
        "schema": "virnucpro.scaling/1",
        "run_id": f"scaling-sample-{day:02d}",
        "environment": _env(day, count=4),
        "results": rows,
    }


def device_benchmark_doc(day: int = 20) -> dict[str, Any]:
    """A GPU benchmark script's JSON: an environment block plus top-level metrics."""
    return {
        "benchmark": "esm2_packed",
        "environment": _env(day),
        "args": {"n": 4096},
        "tokens_per_s": 90600.0,
        "peak_memory_gib": 31.2,
        "results": [{"name": "padded", "tokens_per_s": 59500.0}, {"name": "packed", "tokens_per_s": 90600.0}],
    }


def e2e_doc(day: int = 20) -> dict[str, Any]:
    """An end-to-end JSON in ``benchmarks/gpu/e2e_device.py``'s schema: whole predict runs on 1 and 2
    GPUs, cold and warm compile cache, with wall time by stage."""
    runs = []
    for cache, n, wall in (("cold", 1, 285.0), ("cold", 2, 179.0), ("warm", 1, 250.0), ("warm", 2, 150.0)):
        runs.append(
            {
                "name": f"n{n}/{cache}",
                "n_gpus": n,
                "cache": cache,
                "wall_s": wall,
                "exit_code": 0,
                "stages": {
                    "prepare": 20.0,
                    "shard": 2.0,
                    "workers": wall - 42.0,
                    "classify": 12.0,
                    "merge": 8.0,
                },
                "models": {
                    "esm2": {"tokens": 1.9e7, "device_s": [180.0] * n, "tokens_per_s": 67000.0 * n * 0.9},
                    "dnabert-s": {"tokens": 3.1e7, "device_s": [60.0] * n, "tokens_per_s": 200000.0 * n},
                },
                "gpu_busy_fraction": {"min": 0.75, "mean": 0.8},
                "finish_spread_s": 3.0 * n,
                "finish_spread_pct": 1.5 * n,
            }
        )
    return {
        "benchmark": "e2e_device",
        "schema_version": 1,
        "run_id": f"e2e-sample-{day:02d}",
        "environment": _env(day, count=2),
        "runs": runs,
        "scaling": {"wall_n2_over_n1": 179.0 / 285.0},
    }


def write_samples(out_dir: str | Path, days: tuple[int, ...] = (18, 19, 20)) -> list[Path]:
    """Write one file of each kind per day into ``out_dir``; the last day's ESM-2 run is slower, so a
    report shows a flagged regression. Returns the paths written."""
    out = Path(out_dir)
    paths: list[Path] = []
    for i, day in enumerate(days):
        last = i == len(days) - 1
        docs = {
            f"run-{day}.json": run_record(day, esm_tps=72000.0 * (0.8 if last else 1.0 + 0.01 * i)),
            f"validate-{day}.json": validate_doc(day, seed=day),
            f"bench-{day}.json": pytest_benchmark_doc(day, slow=1.0 + 0.02 * i),
            f"scaling-{day}.json": scaling_doc(day),
            f"device-{day}.json": device_benchmark_doc(day),
        }
        for name, doc in docs.items():
            path = out / name
            atomic_write_text(path, json.dumps(doc, indent=1))
            paths.append(path)
    return paths
