"""VirNucPro production run: prepare -> shard -> embed (one mapped task per GPU) -> classify -> merge
-> record.

**Trigger** opens the parameter form. Its defaults are a CPU demo run (the tiny random demo models
on ``examples/demo.fa``, ``gpu_slots`` 0), so Trigger works as is on any machine. For a real run turn
**Demo models** off, give the input FASTA, the model fields (fair-esm name or checkpoint, DNABERT-S
id or directory, the VirNucPro ``.pth`` classifier; see the README, "Real weights") and ``gpu_slots``
(one shard per GPU). Outputs go to ``output_dir`` (empty: ``out/runs/<run id>`` under the workers'
working directory) in the same layout and formats as ``virnucpro predict -o OUT``; the run record is
ingested into the DuckDB metrics store. The REST API takes the same keys as a ``conf`` object.

A configuration or input error (a missing file, an unknown model, a bad classifier) fails its task
at once; only other errors (a lost worker, an out-of-memory GPU) are retried.

The file only wires tasks: the task chain is `pipeline.airflow_tasks.production_chain` (shared with
the nightly DAG), the work is done by `pipeline.run.steps`, and torch and the models are
imported inside the task bodies, so parsing this file stays fast and light.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import dag

from pipeline.airflow_tasks import production_chain, production_params

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_ROOT = Path("out/runs")

PARAMS = production_params(
    input_default=REPO / "examples" / "demo.fa",
    input_title="Input FASTA",
    input_description="FASTA file (plain or .gz) to classify, as the workers see it (default: the demo).",
    output_description="Where the run writes its files; empty = out/runs/<run id>.",
)


@dag(
    dag_id="virnucpro_predict",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["virnucpro"],
    # Retries are for transient failures; configuration and input errors fail at once
    # (pipeline.airflow_tasks.fail_fast).
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    max_active_runs=4,
)
def virnucpro_predict() -> None:
    production_chain("virnucpro_predict", DEFAULT_OUTPUT_ROOT)


virnucpro_predict()
