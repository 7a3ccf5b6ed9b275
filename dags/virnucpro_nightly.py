"""VirNucPro nightly validation: the production steps on a reference sample, then v1-vs-v2
equivalence and the benchmark suite, all ingested into the DuckDB metrics store, then the HTML
regression report.

**Trigger** opens the parameter form; its defaults run offline on CPU (the tiny random demo models on
``examples/demo.fa``), so Trigger works as is. On a GPU host turn **Demo models** off and set the
model fields, ``gpu_slots`` and ``precision``. The report is written to ``<output_dir>/report.html``
(empty: ``out/nightly/<run id>`` in the repository); its path is the ``report`` task's return value.

The report is rendered even when a check fails; the last task (``gate``) then fails the run, so a
threshold failure, or a slowdown beyond the noise of earlier runs, shows as a red run in the UI with
the report already written. Slowdowns use one default shared with ``virnucpro report``: the larger of
3 standard deviations of the earlier runs' spread and a minimum slowdown (20 % on CPU, 5 % on GPU).

Schedule: every day at 02:00 UTC once unpaused. The trigger dialog's "Unpause on trigger" box only
starts *your* run: the schedule does not run a missed day when unpaused (the first scheduled run is
the next 02:00 after the first unpause; after a later pause, unpausing runs the latest missed night
once). Only one run at a time: a run triggered while another is running waits for it.

``make demo`` runs this DAG in-process with ``airflow dags test``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from pipeline.airflow_tasks import (
    gpu_task_kwargs,
    output_dir_for,
    production_chain,
    production_params,
    run_step,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_ROOT = REPO / "out" / "nightly"

PARAMS = {
    **production_params(
        input_default=REPO / "examples" / "demo.fa",
        input_title="Reference sample",
        input_description="FASTA the nightly run classifies.",
        output_description="Empty = out/nightly/<run id> in the repository.",
    ),
    "validation_sequences": Param(
        16,
        type="integer",
        minimum=1,
        title="Frames compared v1 vs v2",
        description="How many frames the equivalence check embeds with both the reference and the fast path.",
    ),
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
    "skip_benchmarks": Param(
        False,
        type="boolean",
        title="Skip benchmarks",
        description="Leave out the pytest-benchmark suite (about a minute on a small CPU machine).",
    ),
    "benchmark_suite": Param(
        "all",
        enum=["all", "prepare", "packing", "esm2", "dnabert", "pipeline"],
        title="Benchmark suite",
        description="Which of the project's own benchmark suites to run (never a path).",
    ),
    "regression_threshold": Param(
        None,
        type=["null", "number"],
        minimum=0,
        title="Minimum slowdown",
        description="Empty = the shared default: a slowdown must pass 3 standard deviations of the earlier "
        "runs' spread and 20 % on CPU / 5 % on GPU. A number (0.10 = 10 %) replaces the 20 % / 5 %.",
    ),
    "baseline_run": Param(
        None,
        type=["null", "string"],
        title="Pinned baseline run id",
        description="Also compare with this run of the metrics store (empty: only the previous run).",
    ),
    "fail_on_regression": Param(
        True,
        type="boolean",
        title="Fail on regression",
        description="On: a slowdown beyond noise turns the run red (after the report). Off: only reported.",
    ),
}


def _run_dir(params, run_id) -> str:
    return output_dir_for(params, run_id, DEFAULT_OUTPUT_ROOT)


def _threshold(params) -> float | None:
    value = params.get("regression_threshold")
    return None if value is None else float(value)


# No start_date and run_immediately=False: unpausing (also from the trigger dialog) schedules nothing
# before the next 02:00, so a user's triggered run does not queue behind an unrequested one.
@dag(
    dag_id="virnucpro_nightly",
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=False),
    catchup=False,
    params=PARAMS,
    tags=["virnucpro", "validation"],
    # Retries are for transient failures; configuration and input errors fail at once (run_step).
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    max_active_runs=1,
)
def virnucpro_nightly() -> None:
    @task(**gpu_task_kwargs())
    def equivalence(run_dir: str, params=None, run_id=None) -> str:
        from validation.steps import equivalence_step

        return run_step(equivalence_step, params, run_dir, f"virnucpro_nightly:{run_id}:validate")

    @task
    def benchmarks(run_dir: str, params=None) -> str | None:
        from validation.steps import benchmark_step

        return run_step(benchmark_step, run_dir, params["benchmark_suite"], bool(params["skip_benchmarks"]))

    @task
    def ingest(run_record: str, equivalence_json: str, benchmark_json: str | None, params=None) -> str:
        from validation.steps import ingest_step

        paths = [run_record, equivalence_json, benchmark_json]
        return run_step(ingest_step, paths, params["metrics_db"] or None)

    @task
    def regressions(metrics_db: str, run_dir: str, params=None) -> str:
        from validation.steps import regression_step

        baseline = params["baseline_run"] or None
        return run_step(regression_step, metrics_db, _threshold(params), run_dir, baseline=baseline)

    # all_done: the report is written whatever failed before it, so a red run still has one.
    @task(trigger_rule="all_done")
    def report(params=None, run_id=None) -> str:
        from validation.steps import report_step

        return run_step(
            report_step,
            params["metrics_db"] or None,
            _run_dir(params, run_id),
            _threshold(params),
            baseline=params["baseline_run"] or None,
        )

    # No retries: a failed threshold does not fix itself.
    @task(retries=0)
    def gate(equivalence_json: str, regressions_json: str, report_html: str, params=None) -> None:
        from validation.steps import gate_step

        run_step(gate_step, equivalence_json, regressions_json if params["fail_on_regression"] else None)

    run_dir, run_record = production_chain("virnucpro_nightly", DEFAULT_OUTPUT_ROOT)
    equivalence_json = equivalence(run_dir)
    benchmark_json = benchmarks(run_dir)
    # Benchmarks after the production run and the equivalence check: timings taken while another
    # task shares the CPUs are noise.
    [run_record, equivalence_json] >> benchmark_json
    db = ingest(run_record, equivalence_json, benchmark_json)
    regressions_json = regressions(db, run_dir)
    report_html = report()
    regressions_json >> report_html
    gate(equivalence_json, regressions_json, report_html)


virnucpro_nightly()
