"""Step bodies of a production run for the Airflow DAGs (and any other scheduler).

Each function takes plain parameters and paths, builds the frozen configs, calls one pipeline
function and returns paths or ids (small, JSON-serialisable values that fit in XCom). The nightly
validation steps live in `validation.steps`. Nothing here imports Airflow, and torch and
the models are imported inside the functions only, so a DAG file that imports this module parses
fast and without torch.

Idempotence: every step writes atomically to fixed paths under the run's output directory, so a
retried task reproduces the same files. Embedding resumes from finished parts when the task is a
retry (``try_number > 1``) or when the run asks for ``resume``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import (
    ATTENTION_BACKENDS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DNABERT_MODEL,
    DEFAULT_ESM_MODEL,
    DEFAULT_GPU_PRECISION,
    MODEL_KINDS,
    PRECISIONS,
    PredictConfig,
    Settings,
)
from pipeline.core.errors import ConfigError, RunInProgressError
from pipeline.core.paths import path_inside, read_json_state
from pipeline.core.run_record import stage_row
from pipeline.run.predict import encoder_embed_config, make_predict_config, prepare_stage_row

# (kind, shard column) from the model-kind registry, in feature order (DNABERT-S first).
EMBED_KINDS: tuple[tuple[str, str], ...] = tuple((k.name, k.column) for k in MODEL_KINDS)

GPU_POOL = "gpu"
GPU_QUEUE = "gpu"

__all__ = [
    "EMBED_KINDS",
    "GPU_POOL",
    "GPU_QUEUE",
    "RunLayout",
    "classify_step",
    "device_for_slot",
    "embed_config_for",
    "embed_step",
    "gpu_executor_config",
    "merge_step",
    "predict_config",
    "prepare_step",
    "record_step",
    "resolve_output_dir",
    "resolve_precision",
    "shard_step",
]


@dataclass(frozen=True)
class RunLayout:
    """Where a DAG run's files go (the same layout as ``virnucpro predict -o OUT``)."""

    root: Path

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def embeddings(self, kind: str) -> Path:
        return self.root / "embeddings" / kind

    def shard_embeddings(self, kind: str, shard_path: str | Path) -> Path:
        return self.embeddings(kind) / Path(shard_path).stem

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def shard_scores(self, shard_path: str | Path) -> Path:
        return self.scores / Path(shard_path).stem

    @property
    def frame_scores(self) -> Path:
        return self.root / "frame_scores.parquet"

    @property
    def run_record(self) -> Path:
        return self.root / "run_record.json"

    @property
    def stages(self) -> Path:
        """One small JSON per finished stage (timings), assembled into the run record at the end."""
        return self.root / "stages"

    @property
    def validation(self) -> Path:
        return self.root / "validation"


# --------------------------------------------------------------------------------------------
# parameters -> configs


def resolve_output_dir(
    output_dir: str | None, default_root: str | Path, run_id: str, settings: Settings | None = None
) -> Path:
    """The run's output directory: the given one, or ``<root>/<run id made path-safe>``.

    ``<root>`` is ``VIRNUCPRO_OUTPUT_ROOT`` when set, else ``default_root`` (the DAG's own). The result
    must lie below that root once symbolic links and ``..`` are resolved (`path_inside`); a relative
    ``output_dir`` is taken relative to it.
    """
    settings = settings or Settings.from_env()
    root = settings.output_root or Path(default_root).absolute()
    if output_dir and str(output_dir).strip():
        value: str | Path = str(output_dir)
    else:
        value = root / (re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_.") or "run")
    return path_inside(value, root, "output_dir", "VIRNUCPRO_OUTPUT_ROOT")


def check_gpu_slots(gpu_slots: int, settings: Settings) -> int:
    """``gpu_slots`` if the ``gpu`` pool (``VIRNUCPRO_GPU_POOL_SIZE`` slots) holds it, else ConfigError."""
    if gpu_slots < 0:
        raise ConfigError(f"gpu_slots={gpu_slots} must be >= 0 (0 = run on CPU)")
    if gpu_slots > settings.gpu_pool_size:
        raise ConfigError(
            f"gpu_slots={gpu_slots} is more than the {settings.gpu_pool_size} slots of the gpu pool "
            "(VIRNUCPRO_GPU_POOL_SIZE); ask for at most that many, or enlarge the pool and the setting"
        )
    return gpu_slots


def resolve_precision(precision: str, gpu_slots: int) -> str:
    """``auto`` -> bf16 (`DEFAULT_GPU_PRECISION`) when embedding on GPUs, fp32 on CPU (the CLI's default)."""
    if precision == "auto":
        return DEFAULT_GPU_PRECISION if gpu_slots > 0 else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    return precision


def predict_config(
    params: Mapping[str, Any], output_dir: str | Path, settings: Settings | None = None
) -> PredictConfig:
    """Build the run's `PredictConfig` from DAG params (the names of the DAGs' ``Param`` schema).

    ``demo=True`` swaps in the offline demo models exactly as ``virnucpro predict --demo`` does.
    ``gpu_slots`` > 0 means that many shards, one per GPU; a shard's device is chosen in its own
    task (`device_for_slot`), so ``gpus`` stays empty here.
    """
    settings = settings or Settings.from_env()
    raw_input = str(params.get("input_path") or "").strip()
    if not raw_input:
        raise ConfigError("input_path is empty; give the FASTA file to classify")
    input_path = path_inside(raw_input, settings.dag_input_root(), "input_path", "VIRNUCPRO_INPUT_ROOT")
    gpu_slots = check_gpu_slots(int(params.get("gpu_slots", 0)), settings)
    precision = resolve_precision(str(params.get("precision", "auto")), gpu_slots)
    attention = str(params.get("attention", "auto"))
    if attention not in ATTENTION_BACKENDS:
        raise ConfigError(f"attention={attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    return make_predict_config(
        input_path,
        Path(output_dir),
        settings,
        chunk_size=int(params.get("chunk_size", DEFAULT_CHUNK_SIZE)),
        esm_model=str(params.get("esm_model") or DEFAULT_ESM_MODEL),
        dnabert_model=str(params.get("dnabert_model") or DEFAULT_DNABERT_MODEL),
        classifier=str(params.get("classifier") or "random"),
        precision=precision,
        attention=attention,
        resume=bool(params.get("resume", False)),
        demo=bool(params.get("demo", False)),
        progress=False,  # task logs are files: no progress bars
        # embed and classify on different hosts, or a later rescoring/training, need the embeddings
        keep_embeddings=bool(params.get("keep_embeddings", False)),
    )


def device_for_slot(map_index: int, gpu_slots: int, cuda_devices: int) -> str:
    """Device for the shard at ``map_index``: ``cpu`` when ``gpu_slots`` is 0, else one GPU.

    Shard k goes to ``cuda:(k mod visible GPUs)``. With one worker host and the ``gpu`` pool sized
    to its GPUs, concurrent shards land on distinct GPUs; with one Celery worker per GPU
    (``CUDA_VISIBLE_DEVICES`` pinned, concurrency 1) every shard sees its worker's GPU as ``cuda:0``.
    """
    if gpu_slots < 0:
        raise ConfigError(f"gpu_slots={gpu_slots} must be >= 0 (0 = run on CPU)")
    if gpu_slots == 0:
        return "cpu"
    if cuda_devices < 1:
        raise ConfigError(
            f"gpu_slots={gpu_slots} but this worker sees no CUDA device; run the embed tasks on a "
            "GPU worker (queue 'gpu') or trigger with gpu_slots=0 to embed on CPU"
        )
    return f"cuda:{max(map_index, 0) % cuda_devices}"  # map_index is -1 outside a mapped task


def gpu_executor_config(executor: str) -> dict[str, Any]:
    """``executor_config`` for an embed task: a pod asking for one GPU under KubernetesExecutor.

    Empty for every other executor. The Kubernetes client comes with
    ``apache-airflow-providers-cncf-kubernetes``; it is imported only when that executor is
    configured, so other deployments do not need it.
    """
    if "KubernetesExecutor" not in executor:
        return {}
    try:
        from kubernetes.client import models as k8s
    except ImportError as exc:  # depends on the deployment
        raise ConfigError(
            "the Airflow executor is KubernetesExecutor but the kubernetes client is missing; "
            "pip install apache-airflow-providers-cncf-kubernetes"
        ) from exc
    gpu = {"nvidia.com/gpu": "1"}
    return {
        "pod_override": k8s.V1Pod(
            spec=k8s.V1PodSpec(
                containers=[
                    k8s.V1Container(
                        name="base",  # the executor's task container is always called "base"
                        resources=k8s.V1ResourceRequirements(limits=gpu, requests=gpu),
                    )
                ],
                tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            )
        )
    }


# --------------------------------------------------------------------------------------------
# production steps


def _write_stages(layout: RunLayout, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
    path = layout.stages / f"{name}.json"
    atomic_write_text(path, json.dumps([dict(r) for r in rows], indent=2, default=str))
    return path


def prepare_step(params: Mapping[str, Any], output_dir: str | Path, run_id: str | None = None) -> str:
    """Chunk + six-frame translate the input into the run directory; returns that directory.

    Refused before anything is written: a directory holding a finished run (``run_record.json``), one
    that another DAG run (``run_id``) started and did not finish unless ``resume`` is set, and every
    model, classifier or width problem `preflight_models` can see without embedding.
    """
    from pipeline.core.runinfo import utc_now
    from pipeline.prepare.stage import prepare
    from pipeline.run.preflight import preflight_models

    cfg = predict_config(params, output_dir)
    if not cfg.input_path.is_file():
        raise ConfigError(
            f"input_path {cfg.input_path} does not exist on this worker; give a FASTA "
            "file (plain or .gz) that the workers can read"
        )
    layout = RunLayout(Path(output_dir))
    _refuse_taken_run_dir(layout, run_id, cfg.resume)
    preflight_models(cfg)  # a wrong model, classifier or width fails now, not after embedding
    atomic_write_text(layout.stages / "run.json", json.dumps({"started_at": utc_now(), "owner": run_id}))
    start = time.perf_counter()
    prepared = prepare(cfg.input_path, layout.root, cfg.chunk_size)
    stats = asdict(prepared.stats) if prepared.stats is not None else {}
    _write_stages(layout, "prepare", [prepare_stage_row(stats, time.perf_counter() - start)])
    return str(layout.root)


def shard_step(run_dir: str | Path, gpu_slots: int) -> list[str]:
    """Split the prepared frames into ``max(1, gpu_slots)`` length-balanced shards.

    Returns the shard paths; an empty list when no frame survived translation (the embed tasks
    are then skipped and the outputs hold headers only, as with ``virnucpro predict``).
    """
    from pipeline.classify.scoring import frame_ids
    from pipeline.prepare.shard import write_shards

    check_gpu_slots(gpu_slots, Settings.from_env())
    layout = RunLayout(Path(run_dir))
    start = time.perf_counter()
    paths: list[Path] = []
    if frame_ids(layout.root):
        paths = [Path(p) for p in write_shards(layout.root, max(1, gpu_slots), layout.shards)]
    _write_stages(layout, "shard", [stage_row("shard", time.perf_counter() - start, shards=len(paths))])
    return [str(p) for p in paths]


def embed_config_for(cfg: PredictConfig, kind: str, device: str, settings: Settings) -> Any:
    """The `EmbedConfig` of one encoder on one device, with the process settings applied."""
    encoder = cfg.dnabert if kind == "dnabert-s" else cfg.esm
    return replace(encoder_embed_config(cfg, encoder, device, settings), progress=False)


def embed_step(
    params: Mapping[str, Any], run_dir: str | Path, shard_path: str, map_index: int, try_number: int = 1
) -> list[str]:
    """Score one shard (DNABERT-S -> ESM-2 -> classifier head) on the device of its slot, with the
    code a resident worker of ``virnucpro predict`` runs (`FrameWork`); returns the output dirs
    (the shard's score parts, plus its embedding parts when ``keep_embeddings`` is set).

    A retry (``try_number > 1``) resumes from the parts the failed try finished, so a retried task
    ends with the same files as an uninterrupted one.
    """
    import torch

    from pipeline.embed.multigpu.executor import StopSignals
    from pipeline.embed.multigpu.worker import FrameWork, use_compile_cache
    from pipeline.run.predict import frame_job, shard_stage_rows

    settings = Settings.from_env()
    cfg = predict_config(params, run_dir, settings)
    resume = cfg.resume or try_number > 1
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = device_for_slot(map_index, int(params.get("gpu_slots", 0)), cuda)
    layout = RunLayout(Path(run_dir))
    job = replace(frame_job(cfg, settings, device), resume=resume)
    use_compile_cache(settings.compile_cache_dir)
    target = layout.shard_scores(shard_path)
    with StopSignals(abort_on_second=True).installed() as stop:
        result = FrameWork(job).run(Path(shard_path), target, device=device, resume=resume, stop=stop.event)
    _write_stages(layout, f"embed-{Path(shard_path).stem}", shard_stage_rows(result, cfg))
    return [str(target), *result.get("embedding_dirs", {}).values()]


def classify_step(params: Mapping[str, Any], run_dir: str | Path, shard_paths: Sequence[str]) -> str:
    """Assemble the frame scores the embed tasks wrote (``scores/<shard>``) into
    ``frame_scores.parquet`` in ``protein.faa`` order; returns its path. The classifier head
    already ran on each embed task's device, right after the embeddings."""
    from pipeline.run.predict import assemble_scores

    cfg = predict_config(params, run_dir)
    layout = RunLayout(Path(run_dir))
    start = time.perf_counter()
    frames = assemble_scores(layout.root, [layout.shard_scores(p) for p in shard_paths], layout.frame_scores)
    head = sum(
        float(r.get("head_device_seconds") or 0.0)
        for p in sorted(layout.stages.glob("embed-*.json"))
        for r in read_json_list(p)
    )
    _write_stages(
        layout,
        "classify",
        [
            stage_row(
                "classify",
                time.perf_counter() - start + head,
                model=cfg.classifier,
                sequences=frames,
                precision="fp32",
                head_device_seconds=round(head, 6),
            )
        ],
    )
    return str(layout.frame_scores)


def merge_step(run_dir: str | Path) -> dict[str, str]:
    """Write the original-format prediction files and the per-record summary; returns name -> path."""
    from pipeline.classify.merge import merge

    layout = RunLayout(Path(run_dir))
    start = time.perf_counter()
    paths = merge(layout.frame_scores, layout.root, layout.root)
    _write_stages(layout, "merge", [stage_row("merge", time.perf_counter() - start)])
    return {name: str(path) for name, path in paths.items()}


def record_step(
    params: Mapping[str, Any], run_dir: str | Path, run_id: str, outputs: Mapping[str, str] | None = None
) -> str:
    """Assemble the run record (schema ``virnucpro.run/1``) from the stages' files and write it to
    ``OUT/run_record.json``; returns its path (the DAG wiring ingests it into the metrics store)."""
    from pipeline.core.run_record import RunRecord, StageRow, write_run_record
    from pipeline.core.runinfo import environment_info, utc_now

    cfg = predict_config(params, run_dir)
    layout = RunLayout(Path(run_dir))
    stages: list[dict[str, Any]] = []
    for name in ("prepare", "shard"):
        stages += read_json_list(layout.stages / f"{name}.json")
    for path in sorted(layout.stages.glob("embed-*.json")):
        stages += read_json_list(path)
    for name in ("classify", "merge"):
        stages += read_json_list(layout.stages / f"{name}.json")
    record = RunRecord(
        run_id=safe_run_id(run_id),
        kind="predict",
        started_at=_started_at(layout),
        finished_at=utc_now(),
        environment=environment_info(),
        config=json.loads(json.dumps(asdict(cfg), default=str)),
        stages=[StageRow.from_dict(s) for s in stages],
        extra={"demo": cfg.demo, "outputs": dict(outputs or {}), "orchestrator": "airflow"},
    )
    return str(write_run_record(layout.run_record, record))


# --------------------------------------------------------------------------------------------
# helpers


def _refuse_taken_run_dir(layout: RunLayout, run_id: str | None, resume: bool) -> None:
    """Refuse a run directory holding a finished run, or another DAG run's unfinished one."""
    if layout.run_record.exists():
        raise ConfigError(
            f"output_dir {layout.root} holds a finished run (run_record.json); give a new output_dir "
            "(a finished run is never overwritten)"
        )
    started = layout.stages / "run.json"
    if run_id is None or resume or not started.is_file():
        return
    owner = read_json_state(started, "run start record", "give a new output_dir")
    owner = owner.get("owner") if isinstance(owner, dict) else None
    if owner and owner != run_id:
        raise RunInProgressError(
            f"output_dir {layout.root} belongs to the unfinished DAG run {owner}; give a new output_dir, "
            "or trigger with resume=true to take that run over"
        )


def read_json_list(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [data] if isinstance(data, dict) else list(data)


def _started_at(layout: RunLayout) -> str:
    """When the run's first task started (written by `prepare_step`)."""
    path = layout.stages / "run.json"
    if path.exists():
        return str(json.loads(path.read_text())["started_at"])
    from pipeline.core.runinfo import utc_now

    return utc_now()


def safe_run_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:+-]+", "_", run_id)
