"""VirNucPro production run: prepare -> shard -> embed (one mapped task per GPU) -> classify -> merge
-> record.

Trigger it from the UI ("Trigger" with the parameter form) or through the REST API with a ``conf``
object whose keys are the parameters below. Outputs go to ``output_dir`` (default
``out/runs/<run id>`` under the worker's working directory) in the same layout and formats as
``virnucpro predict -o OUT``; the run record is ingested into the DuckDB metrics store.

The file only wires tasks: the work is done by `pipeline.orchestration`, and torch and the models
are imported inside the task bodies, so parsing this file stays fast and light.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param, conf, dag, task

from pipeline.config import ATTENTION_BACKENDS, DEFAULT_DNABERT_MODEL, DEFAULT_ESM_MODEL, PRECISIONS
from pipeline.orchestration import GPU_POOL, GPU_QUEUE, gpu_executor_config

DEFAULT_OUTPUT_ROOT = Path("out/runs")

PARAMS = {
    "input_path": Param(
        type="string", minLength=1, title="Input FASTA",
        description="FASTA file (plain or .gz) to classify, as seen by the workers.",
    ),
    "output_dir": Param(
        "", type="string", title="Output directory",
        description="Where the run writes its files; empty = out/runs/<run id>.",
    ),
    "chunk_size": Param(
        500, type="integer", minimum=3, examples=[300, 500], title="Chunk size (bp)",
        description="300 or 500 for the published classifiers; any length >= 3 is accepted.",
    ),
    "esm_model": Param(DEFAULT_ESM_MODEL, type="string", minLength=1, title="ESM-2 model",
                       description="fair-esm name, local checkpoint, or random:<fair-esm name>."),
    "dnabert_model": Param(DEFAULT_DNABERT_MODEL, type="string", minLength=1, title="DNABERT-S model",
                           description="Hugging Face id or local directory, or random:dnabert-s[-tiny]."),
    "classifier": Param("random", type="string", minLength=1, title="Classifier",
                        description="VirNucPro .pth, a project .safetensors file, or random (demo only)."),
    "precision": Param("auto", enum=["auto", *PRECISIONS], title="Precision",
                       description="auto = fp16 on GPUs, fp32 on CPU."),
    "attention": Param("auto", enum=list(ATTENTION_BACKENDS), title="Attention backend"),
    "gpu_slots": Param(1, type="integer", minimum=0, title="GPU slots",
                       description="Number of shards, one GPU each; 0 embeds one shard on CPU."),
    "resume": Param(False, type="boolean", title="Resume",
                    description="Reuse finished embedding parts found in the output directory."),
    "demo": Param(False, type="boolean", title="Demo models",
                  description="Tiny random models and classifier (offline; not meaningful)."),
    "metrics_db": Param("", type="string", title="Metrics database",
                        description="DuckDB file; empty = VIRNUCPRO_METRICS_DB or reports/metrics.duckdb."),
}

# Queues matter only to CeleryExecutor (LocalExecutor and KubernetesExecutor ignore them), so the
# embed tasks always ask for the "gpu" queue; the pod override is built only under
# KubernetesExecutor.
_EXECUTOR = conf.get("core", "executor", fallback="LocalExecutor")


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
    @task
    def prepare(params=None, run_id=None) -> str:
        from pipeline.orchestration import prepare_step, resolve_output_dir

        out = resolve_output_dir(params["output_dir"], DEFAULT_OUTPUT_ROOT, run_id)
        return prepare_step(params, out)

    @task
    def shard(run_dir: str, params=None) -> list[str]:
        from pipeline.orchestration import shard_step

        return shard_step(run_dir, int(params["gpu_slots"]))

    @task(pool=GPU_POOL, queue=GPU_QUEUE, retries=2, executor_config=gpu_executor_config(_EXECUTOR))
    def embed(shard_path: str, run_dir: str, params=None, ti=None) -> list[str]:
        from pipeline.orchestration import embed_step

        return embed_step(params, run_dir, shard_path, ti.map_index, ti.try_number)

    # none_failed: with no frame to embed the mapped embed task is skipped, and classify still
    # writes the (empty) scores so the run ends with header-only outputs like `virnucpro predict`.
    @task(trigger_rule="none_failed")
    def classify(run_dir: str, shard_paths: list[str], params=None) -> str:
        from pipeline.orchestration import classify_step

        return classify_step(params, run_dir, shard_paths)

    @task
    def merge(run_dir: str, scores: str) -> dict[str, str]:
        from pipeline.orchestration import merge_step

        return merge_step(run_dir)

    @task
    def record(run_dir: str, outputs: dict[str, str], params=None, run_id=None) -> str:
        from pipeline.orchestration import record_step

        return record_step(params, run_dir, f"virnucpro_predict:{run_id}", outputs, params["metrics_db"] or None)

    run_dir = prepare()
    shards = shard(run_dir)
    embedded = embed.partial(run_dir=run_dir).expand(shard_path=shards)
    scores = classify(run_dir, shards)
    embedded >> scores
    record(run_dir, merge(run_dir, scores))


virnucpro_predict()
