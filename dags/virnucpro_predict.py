"""VirNucPro production run: prepare -> shard -> embed (one mapped task per GPU) -> classify -> merge
-> record.

Trigger it from the UI ("Trigger" with the parameter form) or through the REST API with a ``conf``
object whose keys are the parameters below. Outputs go to ``output_dir`` (default
``out/runs/<run id>`` under the worker's working directory) in the same layout and formats as
``virnucpro predict -o OUT``; the run record is ingested into the DuckDB metrics store.

The file only wires tasks: the task chain is `pipeline.airflow_tasks.production_chain` (shared with
the nightly DAG), the work is done by `pipeline.run.steps`, and torch and the models are
imported inside the task bodies, so parsing this file stays fast and light.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param, dag

from pipeline.airflow_tasks import production_chain
from pipeline.core.config import ATTENTION_BACKENDS, DEFAULT_DNABERT_MODEL, DEFAULT_ESM_MODEL, PRECISIONS

DEFAULT_OUTPUT_ROOT = Path("out/runs")

PARAMS = {
    "input_path": Param(
        type="string",
        minLength=1,
        title="Input FASTA",
        description="FASTA file (plain or .gz) to classify, as seen by the workers.",
    ),
    "output_dir": Param(
        "",
        type="string",
        title="Output directory",
        description="Where the run writes its files; empty = out/runs/<run id>.",
    ),
    "chunk_size": Param(
        500,
        type="integer",
        minimum=3,
        examples=[300, 500],
        title="Chunk size (bp)",
        description="300 or 500 for the published classifiers; any length >= 3 is accepted.",
    ),
    "esm_model": Param(
        DEFAULT_ESM_MODEL,
        type="string",
        minLength=1,
        title="ESM-2 model",
        description="fair-esm name, local checkpoint, or random:<fair-esm name>.",
    ),
    "dnabert_model": Param(
        DEFAULT_DNABERT_MODEL,
        type="string",
        minLength=1,
        title="DNABERT-S model",
        description="Hugging Face id or local directory, or random:dnabert-s[-tiny].",
    ),
    "classifier": Param(
        "random",
        type="string",
        minLength=1,
        title="Classifier",
        description="VirNucPro .pth, a project .safetensors file, or random (demo only).",
    ),
    "precision": Param(
        "auto", enum=["auto", *PRECISIONS], title="Precision", description="auto = fp16 on GPUs, fp32 on CPU."
    ),
    "attention": Param("auto", enum=list(ATTENTION_BACKENDS), title="Attention backend"),
    "gpu_slots": Param(
        1,
        type="integer",
        minimum=0,
        title="GPU slots",
        description="Number of shards, one GPU each; 0 embeds one shard on CPU.",
    ),
    "resume": Param(
        False,
        type="boolean",
        title="Resume",
        description="Reuse finished embedding parts found in the output directory.",
    ),
    "demo": Param(
        False,
        type="boolean",
        title="Demo models",
        description="Tiny random models and classifier (offline; not meaningful).",
    ),
    "metrics_db": Param(
        "",
        type="string",
        title="Metrics database",
        description="DuckDB file; empty = VIRNUCPRO_METRICS_DB or reports/metrics.duckdb.",
    ),
}


@dag(
    dag_id="virnucpro_predict",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["virnucpro"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    max_active_runs=4,
)
def virnucpro_predict() -> None:
    production_chain("virnucpro_predict", DEFAULT_OUTPUT_ROOT)


virnucpro_predict()
