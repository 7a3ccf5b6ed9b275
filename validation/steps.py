"""Step bodies of the nightly validation DAG: equivalence, benchmarks, ingestion, regression
checks, the report and the gate.

Like `pipeline.run.steps`, each takes plain parameters and paths and returns small JSON-serialisable
values; nothing here imports Airflow, and torch is imported inside the functions only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import Settings
from pipeline.core.errors import ConfigError, ThresholdFailed, VirNucProError
from pipeline.core.paths import path_inside
from pipeline.run.steps import RunLayout, predict_config, read_json_list, safe_run_id

__all__ = ["benchmark_step", "equivalence_step", "gate_step", "ingest_step", "regression_step", "report_step"]


def equivalence_step(params: Mapping[str, Any], run_dir: str | Path, run_id: str | None = None) -> str:
    """v1 (padded fp32 reference) vs v2 (packed, reduced precision) for the run's models; writes the
    ``virnucpro validate`` JSON document to ``OUT/validation/equivalence.json`` and returns its path.

    Threshold failures do not raise here: they are recorded (``passed: false``) so that the report
    is rendered before `gate_step` fails the run.
    """
    import torch

    from pipeline.core.runinfo import utc_now
    from pipeline.models.fp8 import fp8_unavailable_reason
    from validation.equivalence import EquivalenceConfig, Thresholds, run_equivalence, validation_document

    cfg = predict_config(params, run_dir)
    gpu = int(params.get("gpu_slots", 0)) > 0 and torch.cuda.is_available()
    # an fp8 row wherever FP8 can run (Hopper/Ada with torchao installed), with the fp8 thresholds
    fp8 = ("fp8",) if gpu and fp8_unavailable_reason("cuda") is None else ()
    config = EquivalenceConfig(
        esm_model=cfg.esm.model,
        dnabert_model=cfg.dnabert.model,
        precisions=("fp16", "bf16", *fp8) if gpu else ("bf16",),
        attentions=(cfg.esm.attention,),
        n=int(params.get("validation_sequences", 16)),
        device="cuda" if gpu else "cpu",
        classifier=cfg.classifier,
        chunk_size=max(cfg.chunk_size, 30),
        thresholds=Thresholds(
            min_cosine=float(params.get("min_cosine", 0.999)),
            min_label_agreement=float(params.get("min_label_agreement", 0.999)),
        ),
    )
    started = utc_now()
    doc = validation_document(config, run_equivalence(config), started)
    if run_id:
        doc["run_id"] = safe_run_id(run_id)
    out = RunLayout(Path(run_dir)).validation / "equivalence.json"
    atomic_write_text(out, json.dumps(doc, indent=2, default=str))
    return str(out)


#: The project's own benchmark suites, the only ones the nightly DAG runs (its ``benchmark_suite``
#: param names one of these; never a path, so no parameter can make pytest import other code).
BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
BENCHMARK_SUITES: dict[str, str] = {
    "all": ".",
    "prepare": "bench_prepare.py",
    "packing": "bench_packing.py",
    "esm2": "bench_esm2.py",
    "dnabert": "bench_dnabert.py",
    "pipeline": "bench_pipeline.py",
}


def benchmark_command(json_out: Path, suite: str = "all") -> list[str]:
    """The pytest command line of one of `BENCHMARK_SUITES`, writing ``--benchmark-json`` to ``json_out``."""
    if suite not in BENCHMARK_SUITES:
        raise ConfigError(
            f"benchmark suite {suite!r} is not one of {', '.join(BENCHMARK_SUITES)}; the nightly run only "
            "runs the project's own benchmarks"
        )
    target = (BENCHMARKS_DIR / BENCHMARK_SUITES[suite]).resolve()
    return [
        sys.executable,
        "-m",
        "pytest",
        str(target),
        f"--rootdir={BENCHMARKS_DIR.parent}",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_out}",
    ]


def benchmark_step(output_dir: str | Path, suite: str = "all", skip: bool = False) -> str | None:
    """Run one of the project's benchmark suites (`BENCHMARK_SUITES`, found beside this package)
    with ``--benchmark-json RUN/validation/benchmarks.json``; None when skipped or when the
    benchmarks are not installed (a wheel without the repository).

    GPU benchmarks skip themselves without CUDA, so on CPU this runs the CPU-sized cases only.
    """
    if skip:
        return None
    layout = RunLayout(Path(output_dir))
    out = layout.validation / "benchmarks.json"
    cmd = benchmark_command(out, str(suite))
    if not BENCHMARKS_DIR.is_dir():
        return None
    layout.validation.mkdir(parents=True, exist_ok=True)
    # the worker's own pytest settings are not the suite's: run it as `make bench` would
    env = {k: v for k, v in os.environ.items() if k not in {"PYTEST_ADDOPTS", "PYTEST_PLUGINS"}}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=BENCHMARKS_DIR.parent, env=env)
    atomic_write_text(layout.validation / "benchmarks.log", proc.stdout + proc.stderr)
    # 5 = nothing collected: benchmarks are optional for the nightly check, missing ones are not.
    if proc.returncode not in (0, 5):
        raise VirNucProError(
            f"benchmarks failed (pytest exit {proc.returncode}); see "
            f"{layout.validation / 'benchmarks.log'} and rerun them with pytest {cmd[3]}"
        )
    return str(out) if out.exists() else None


def _metrics_db(metrics_db: str | Path | None) -> Path:
    """The metrics database: ``metrics_db`` (a DAG param) inside ``VIRNUCPRO_METRICS_ROOT``, else
    the configured ``VIRNUCPRO_METRICS_DB``."""
    settings = Settings.from_env()
    if not metrics_db or not str(metrics_db).strip():
        return settings.metrics_db
    return path_inside(str(metrics_db), settings.dag_metrics_root(), "metrics_db", "VIRNUCPRO_METRICS_ROOT")


def ingest_step(paths: Sequence[str | Path | None], metrics_db: str | Path | None = None) -> str:
    """Ingest run records / validation / benchmark JSON files into DuckDB; returns the DB path.

    Ingestion is idempotent (files already seen are skipped), so a retried task adds nothing twice.
    """
    from validation.metrics_store import MetricsStore

    db = _metrics_db(metrics_db)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = MetricsStore(db)
    for path in paths:
        if path:
            store.ingest_file(Path(path))
    return str(db)


def regression_step(
    metrics_db: str | Path | None, threshold: float | None, run_dir: str | Path, baseline: str | None = None
) -> str:
    """Compare the latest runs in the store with the runs before them (and with the pinned
    ``baseline`` run, when given); writes every comparison to ``OUT/validation/regressions.json``
    (``regressed`` marks the slowdowns beyond noise) and returns that path. ``threshold`` None is
    the shared default (`validation.regression.DEFAULT_POLICY`)."""
    from validation.regression import check_regressions

    layout = RunLayout(Path(run_dir))
    rows = check_regressions(_metrics_db(metrics_db), threshold, baseline=baseline)
    out = layout.validation / "regressions.json"
    atomic_write_text(out, json.dumps(rows, indent=2, default=str))
    return str(out)


def report_step(
    metrics_db: str | Path | None,
    run_dir: str | Path,
    threshold: float | None = None,
    baseline: str | None = None,
) -> str:
    """Render the self-contained HTML report of the metrics store to ``OUT/report.html``."""
    from validation.report import render_report

    layout = RunLayout(Path(run_dir))
    scored = layout.root / "frame_scores.parquet"
    return str(
        render_report(
            _metrics_db(metrics_db),
            layout.root / "report.html",
            slowdown_threshold=threshold,
            baseline=baseline,
            run_dir=layout.root if scored.is_file() else None,
        )
    )


def gate_step(equivalence_json: str | None, regressions_json: str | None) -> None:
    """Raise `ThresholdFailed` when an equivalence threshold or a regression check failed."""
    problems: list[str] = []
    if equivalence_json:
        doc = json.loads(Path(equivalence_json).read_text())
        for row in doc.get("results", []) if isinstance(doc, dict) else doc:
            if row.get("passed") is False:
                problems.append(
                    f"equivalence {row.get('comparison', '?')} {row.get('model', '?')} "
                    f"{row.get('precision', '')}: cos_min={row.get('cos_min')}"
                )
        if isinstance(doc, dict) and doc.get("passed") is False and not problems:
            problems.append("equivalence: the validation run failed its thresholds")
    if regressions_json:
        for row in read_json_list(Path(regressions_json)):
            if row.get("regressed"):
                problems.append(
                    f"regression {row.get('metric')}: {row.get('reference_value')} -> "
                    f"{row.get('current_value')} {row.get('unit', '')} "
                    f"({100 * float(row.get('slowdown') or 0):.0f}% worse than {row.get('reference_run')})"
                )
    if problems:
        raise ThresholdFailed(
            f"{len(problems)} nightly check(s) failed (details in the report): " + "; ".join(problems)
        )
