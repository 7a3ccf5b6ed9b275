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

from airflow.sdk import Param, dag

from pipeline.airflow_tasks import production_chain
from pipeline.core.config import ATTENTION_BACKENDS, DEFAULT_DNABERT_MODEL, DEFAULT_ESM_MODEL, PRECISIONS
from pipeline.run.predict import DEMO_DNABERT_MODEL, DEMO_ESM_MODEL

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_ROOT = Path("out/runs")

PARAMS = {
    "input_path": Param(
        str(REPO / "examples" / "demo.fa"),
        type="string",
        minLength=1,
        title="Input FASTA",
        description="FASTA file (plain or .gz) to classify, as the workers see it (default: the demo).",
    ),
    # Optional fields accept null: the form leaves an empty optional field out (a plain "string"
    # would be marked required and block Trigger).
    "output_dir": Param(
        None,
        type=["null", "string"],
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
        description=f"fair-esm name, local checkpoint, or random:<fair-esm name>. Ignored while Demo models "
        f"is on (demo uses {DEMO_ESM_MODEL}).",
    ),
    "dnabert_model": Param(
        DEFAULT_DNABERT_MODEL,
        type="string",
        minLength=1,
        title="DNABERT-S model",
        description="Hugging Face id or local directory, or random:dnabert-s[-tiny]. Ignored while Demo "
        f"models is on (demo uses {DEMO_DNABERT_MODEL}).",
    ),
    "classifier": Param(
        "random",
        type="string",
        minLength=1,
        title="Classifier",
        description="VirNucPro .pth (300_model.pth / 500_model.pth for chunk size 300 / 500), a project "
        ".safetensors file, or random. Ignored while Demo models is on (demo uses random).",
    ),
    "precision": Param(
        "auto",
        enum=["auto", *PRECISIONS],
        title="Precision",
        description="auto = bf16 on GPUs, fp32 on CPU; fp8 = ESM-2's MLP in FP8 (Hopper).",
    ),
    "attention": Param(
        "auto",
        enum=list(ATTENTION_BACKENDS),
        title="Attention backend",
        description="auto = the fastest correct backend for each model and device; sdpa on CPU.",
    ),
    "gpu_slots": Param(
        0,
        type="integer",
        minimum=0,
        maximum=64,  # a sane bound; the real one is the gpu pool (VIRNUCPRO_GPU_POOL_SIZE)
        title="GPU slots",
        description="Number of shards, one GPU each (set it to your GPU count); 0 embeds one shard on CPU.",
    ),
    "resume": Param(
        False,
        type="boolean",
        title="Resume",
        description="Reuse finished embedding parts found in the output directory.",
    ),
    "demo": Param(
        True,
        type="boolean",
        title="Demo models",
        description=f"On: tiny random models ({DEMO_ESM_MODEL}, {DEMO_DNABERT_MODEL}, random classifier), "
        "offline and CPU-sized, results not meaningful. Off for a real run with the model fields below.",
    ),
    "metrics_db": Param(
        None,
        type=["null", "string"],
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
    # Retries are for transient failures; configuration and input errors fail at once
    # (pipeline.airflow_tasks.fail_fast).
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
    max_active_runs=4,
)
def virnucpro_predict() -> None:
    production_chain("virnucpro_predict", DEFAULT_OUTPUT_ROOT)


virnucpro_predict()
