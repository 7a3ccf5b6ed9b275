"""VirNucPro nightly validation: the production steps on a reference sample, then v1-vs-v2
equivalence and the benchmark suite, all ingested into the DuckDB metrics store, then the HTML
regression report.

The report is rendered even when a check fails; the last task (``gate``) then fails the run, so a
threshold or regression failure shows as a red run in the UI with the report already written to
``<output_dir>/report.html``.

Defaults run offline on CPU (the tiny random demo models on ``examples/demo.fa``); on a GPU host set
``demo`` off, the real models, ``gpu_slots`` and ``precision``. ``make demo`` runs this DAG in-process
with ``airflow dags test``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, task

from pipeline.airflow_tasks import gpu_task_kwargs, output_dir_for, production_chain
from pipeline.core.config import ATTENTION_BACKENDS, DEFAULT_DNABERT_MODEL, DEFAULT_ESM_MODEL, PRECISIONS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_ROOT = REPO / "out" / "nightly"

PARAMS = {
    "input_path": Param(
        str(REPO / "examples" / "demo.fa"),
        type="string",
        minLength=1,
        title="Reference sample",
        description="FASTA the nightly run classifies.",
    ),
    "output_dir": Param(
        "",
        type="string",
        title="Output directory",
        description="Empty = out/nightly/<run id> in the repository.",
    ),
    "chunk_size": Param(500, type="integer", minimum=3, examples=[300, 500], title="Chunk size (bp)"),
    "esm_model": Param(DEFAULT_ESM_MODEL, type="string", minLength=1, title="ESM-2 model"),
    "dnabert_model": Param(DEFAULT_DNABERT_MODEL, type="string", minLength=1, title="DNABERT-S model"),
    "classifier": Param("random", type="string", minLength=1, title="Classifier"),
    "precision": Param(
        "auto", enum=["auto", *PRECISIONS], title="Precision", description="auto = fp16 on GPUs, fp32 on CPU."
    ),
    "attention": Param("auto", enum=list(ATTENTION_BACKENDS), title="Attention backend"),
    "gpu_slots": Param(
        0,
        type="integer",
        minimum=0,
        title="GPU slots",
        description="Shards, one GPU each; 0 embeds one shard on CPU.",
    ),
    "resume": Param(False, type="boolean", title="Resume"),
    "demo": Param(
        True,
        type="boolean",
        title="Demo models",
        description="Tiny random models and classifier: offline and CPU-sized.",
    ),
    "validation_sequences": Param(16, type="integer", minimum=1, title="Frames compared v1 vs v2"),
    "min_cosine": Param(
        0.999,
        type="number",
        minimum=-1,
        maximum=1,
        title="Minimum cosine v1 vs v2",
        description="Every frame's cosine similarity, v2 against v1, must reach this.",
    ),
    "min_label_agreement": Param(
        0.999,
        type="number",
        minimum=0,
        maximum=1,
        title="Minimum label agreement",
        description="Fraction of frames and chunks whose label v2 must keep.",
    ),
    "skip_benchmarks": Param(False, type="boolean", title="Skip benchmarks"),
    "benchmarks_path": Param(str(REPO / "benchmarks"), type="string", title="Benchmarks directory"),
    "regression_threshold": Param(
        0.25,
        type="number",
        minimum=0,
        title="Slowdown threshold",
        description="A metric this fraction worse than the previous run fails "
        "the run (0.25 = 25 %; CPU timings are noisy).",
    ),
    "baseline_run": Param(
        "",
        type="string",
        title="Pinned baseline run id",
        description="Also compare with this run of the metrics store (empty: only the previous run).",
    ),
    "fail_on_regression": Param(
        True,
        type="boolean",
        title="Fail on regression",
        description="Off: slowdowns are only reported, not failed (noisy machines).",
    ),
    "metrics_db": Param(
        "",
        type="string",
        title="Metrics database",
        description="DuckDB file; empty = VIRNUCPRO_METRICS_DB or reports/metrics.duckdb.",
    ),
}


def _run_dir(params, run_id) -> str:
    return output_dir_for(params, run_id, DEFAULT_OUTPUT_ROOT)


@dag(
    dag_id="virnucpro_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params=PARAMS,
    tags=["virnucpro", "validation"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    max_active_runs=1,
)
def virnucpro_nightly() -> None:
    @task(**gpu_task_kwargs())
    def equivalence(run_dir: str, params=None, run_id=None) -> str:
        from validation.steps import equivalence_step

        return equivalence_step(params, run_dir, f"virnucpro_nightly:{run_id}:validate")

    @task
    def benchmarks(run_dir: str, params=None) -> str | None:
        from validation.steps import benchmark_step

        return benchmark_step(run_dir, params["benchmarks_path"], bool(params["skip_benchmarks"]))

    @task
    def ingest(run_record: str, equivalence_json: str, benchmark_json: str | None, params=None) -> str:
        from validation.steps import ingest_step

        return ingest_step([run_record, equivalence_json, benchmark_json], params["metrics_db"] or None)

    @task
    def regressions(metrics_db: str, run_dir: str, params=None) -> str:
        from validation.steps import regression_step

        return regression_step(
            metrics_db,
            float(params["regression_threshold"]),
            run_dir,
            baseline=params["baseline_run"] or None,
        )

    # all_done: the report is written whatever failed before it, so a red run still has one.
    @task(trigger_rule="all_done")
    def report(params=None, run_id=None) -> str:
        from validation.steps import report_step

        return report_step(
            params["metrics_db"] or None,
            _run_dir(params, run_id),
            float(params["regression_threshold"]),
            baseline=params["baseline_run"] or None,
        )

    # No retries: a failed threshold does not fix itself.
    @task(retries=0)
    def gate(equivalence_json: str, regressions_json: str, report_html: str, params=None) -> None:
        from validation.steps import gate_step

        gate_step(equivalence_json, regressions_json if params["fail_on_regression"] else None)

    run_dir, run_record = production_chain("virnucpro_nightly", DEFAULT_OUTPUT_ROOT)
    equivalence_json = equivalence(run_dir)
    benchmark_json = benchmarks(run_dir)
    run_record >> benchmark_json  # benchmarks after the production run: they share the CPUs
    db = ingest(run_record, equivalence_json, benchmark_json)
    regressions_json = regressions(db, run_dir)
    report_html = report()
    regressions_json >> report_html
    gate(equivalence_json, regressions_json, report_html)


virnucpro_nightly()
