"""The production task chain shared by the Airflow DAGs: prepare -> shard -> embed (mapped, one task
per shard on the ``gpu`` pool) -> classify -> merge -> record.

`production_chain` is called inside a ``@dag`` function body and adds the six tasks to that DAG.
It lives in the installed package (not beside the DAG files) so that the scheduler, the workers,
``DagBag(dag_folder=...)`` and ``airflow dags test`` all import the same definition whatever is
on ``sys.path``. Airflow is imported inside the functions only, so `pipeline` keeps working
without it; torch and the models are imported inside the task bodies (via
`pipeline.run.steps`), so DAG parsing stays light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
    ResumeMismatchError,
    ThresholdFailed,
    as_virnucpro_error,
)
from pipeline.core.paths import run_lock
from pipeline.run.steps import GPU_POOL, GPU_QUEUE, gpu_executor_config, resolve_output_dir

__all__ = [
    "production_params",
    "DETERMINISTIC_ERRORS",
    "gpu_task_kwargs",
    "output_dir_for",
    "production_chain",
    "run_step",
]

T = TypeVar("T")

# Errors that the same parameters and files raise again on every try: retrying them only delays the
# red task (by retries x retry_delay). Everything else (a lost worker, CUDA out of memory, an
# interrupted part, a file-system error) keeps the task's retries.
DETERMINISTIC_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    InputError,
    ModelLoadError,
    BackendUnavailableError,
    ResumeMismatchError,
    ThresholdFailed,
)


def run_step(
    step: Callable[..., T], *args: Any, locks: Sequence[tuple[str | Path, bool]] = (), **kwargs: Any
) -> T:
    """Call one step body inside the DAG tasks' error boundary (the CLI's, for tasks), holding
    ``locks`` (``(run directory or shard file, shared)`` pairs, `pipeline.core.paths.run_lock`) while
    it runs: a second run into the same directory is refused at once (`RunInProgressError`).

    An operating-system error leaves as a one-line `FileSystemError` naming the path, raised without
    its chain so the task log shows the message, not a library traceback; typed errors pass through.
    A deterministic error (`DETERMINISTIC_ERRORS`: configuration, input, model, threshold) becomes
    Airflow's fail-now exception, so the task fails at once instead of using its retries.
    """
    try:
        with contextlib.ExitStack() as held:
            for path, shared in locks:
                held.enter_context(run_lock(path, shared=shared))
            return step(*args, **kwargs)
    except Exception as exc:
        error = as_virnucpro_error(exc)
        if error is None or (error is exc and not isinstance(error, DETERMINISTIC_ERRORS)):
            raise
    if isinstance(error, DETERMINISTIC_ERRORS):
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{type(error).__name__}: {error}") from None
    raise error from None


def production_params(
    *, input_default: str | Path, input_title: str, input_description: str, output_description: str
) -> dict[str, Any]:
    """The ``Param`` form of a production run, shared by both DAGs (the keys `production_chain` and
    `pipeline.run.steps.predict_config` read). Only the input and output fields differ per DAG."""
    from airflow.sdk import Param

    from pipeline.core.config import ATTENTION_BACKENDS, DEFAULT_DNABERT_MODEL, DEFAULT_ESM_MODEL, PRECISIONS
    from pipeline.run.predict import DEMO_DNABERT_MODEL, DEMO_ESM_MODEL

    return {
        "input_path": Param(
            str(input_default),
            type="string",
            minLength=1,
            title=input_title,
            description=input_description,
        ),
        # Optional fields accept null: the form leaves an empty optional field out (a plain "string"
        # would be marked required and block Trigger).
        "output_dir": Param(
            None,
            type=["null", "string"],
            title="Output directory",
            description=output_description,
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
            description="fair-esm name, local checkpoint, or random:<fair-esm name>. Ignored while "
            f"Demo models is on (demo uses {DEMO_ESM_MODEL}).",
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
            description="Number of shards, one GPU each (set it to your GPU count); "
            "0 embeds one shard on CPU.",
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
            description=f"On: tiny random models ({DEMO_ESM_MODEL}, {DEMO_DNABERT_MODEL}, random "
            "classifier), offline and CPU-sized, results not meaningful. Off for a real run with the "
            "model fields below.",
        ),
        "metrics_db": Param(
            None,
            type=["null", "string"],
            title="Metrics database",
            description="DuckDB file; empty = VIRNUCPRO_METRICS_DB or reports/metrics.duckdb.",
        ),
    }


def gpu_task_kwargs() -> dict[str, Any]:
    """``@task`` arguments of a task that uses a GPU: the ``gpu`` pool and queue, and the pod
    override under KubernetesExecutor.

    Queues matter only to CeleryExecutor (LocalExecutor and KubernetesExecutor ignore them), so
    GPU tasks always ask for the ``gpu`` queue; the pod override is built only when the configured
    executor is KubernetesExecutor.
    """
    from airflow.sdk import conf

    executor = conf.get("core", "executor", fallback="LocalExecutor")
    return {"pool": GPU_POOL, "queue": GPU_QUEUE, "executor_config": gpu_executor_config(executor)}


def output_dir_for(params: Any, run_id: str, default_root: str | Path) -> str:
    """The run's output directory: ``params["output_dir"]``, else ``default_root/<run id>``."""
    return str(resolve_output_dir(params["output_dir"], default_root, run_id))


def production_chain(dag_id: str, default_output_root: str | Path) -> tuple[Any, Any]:
    """Add the production tasks to the DAG being defined; returns the XComArgs ``(run_dir,
    run_record)`` (the run directory and the path of its ``run_record.json``) for further wiring.

    The DAG's params must include the keys of ``virnucpro_predict``'s schema (input_path,
    output_dir, chunk_size, models, classifier, precision, attention, gpu_slots, resume, demo,
    metrics_db). The run record is ingested under the run id ``<dag_id>:<Airflow run id>``.
    """
    from airflow.sdk import task

    @task
    def prepare(params=None, run_id=None) -> str:
        from pipeline.run.steps import prepare_step

        run_dir = run_step(output_dir_for, params, run_id, default_output_root)
        return run_step(prepare_step, params, run_dir, run_id=f"{dag_id}:{run_id}", locks=[(run_dir, False)])

    @task
    def shard(run_dir: str, params=None) -> list[str]:
        from pipeline.run.steps import shard_step

        return run_step(shard_step, run_dir, int(params["gpu_slots"]), locks=[(run_dir, False)])

    @task(retries=2, **gpu_task_kwargs())
    def embed(shard_path: str, run_dir: str, params=None, ti=None) -> list[str]:
        from pipeline.run.steps import embed_step

        # the mapped embed tasks of one run share the run directory, each holding its own shard
        locks = [(run_dir, True), (shard_path, False)]
        return run_step(embed_step, params, run_dir, shard_path, ti.map_index, ti.try_number, locks=locks)

    # none_failed: with no frame to embed the mapped embed task is skipped, and classify still
    # writes the (empty) scores so the run ends with header-only outputs like `virnucpro predict`.
    @task(trigger_rule="none_failed")
    def classify(run_dir: str, shard_paths: list[str], params=None) -> str:
        from pipeline.run.steps import classify_step

        return run_step(classify_step, params, run_dir, shard_paths, locks=[(run_dir, False)])

    @task
    def merge(run_dir: str, scores: str) -> dict[str, str]:
        from pipeline.run.steps import merge_step

        return run_step(merge_step, run_dir, locks=[(run_dir, False)])

    @task
    def record(run_dir: str, outputs: dict[str, str], params=None, run_id=None) -> str:
        from pipeline.run.steps import record_step
        from validation.steps import ingest_step

        path = run_step(record_step, params, run_dir, f"{dag_id}:{run_id}", outputs, locks=[(run_dir, False)])
        run_step(ingest_step, [path], params["metrics_db"] or None)
        return path

    run_dir = prepare()
    shards = shard(run_dir)
    embedded = embed.partial(run_dir=run_dir).expand(shard_path=shards)
    scores = classify(run_dir, shards)
    embedded >> scores
    return run_dir, record(run_dir, merge(run_dir, scores))
