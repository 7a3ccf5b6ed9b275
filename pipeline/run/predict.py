"""A whole prediction run on one machine: prepare -> shard -> score (DNABERT-S -> ESM-2 -> MLP) -> merge.

The frames are split into one token-balanced shard per GPU (one shard on the CPU). Each shard is
scored by one resident worker (`pipeline.embed.frames` through `pipeline.embed.multigpu`): the
process loads DNABERT-S, ESM-2 and the classifier head once and takes its frames through all
three, the fp32 head running on the GPU right after the embeddings; on the CPU the same code runs
in this process. Embeddings are written only with ``keep_embeddings`` (``--keep-embeddings``).
The scores are assembled into ``frame_scores.parquet`` in ``protein.faa`` order and merged into the
original-format outputs. Every stage's time lands in ``OUT/run_record.json`` (schema
``virnucpro.run/1``, `pipeline.core.run_record`).

A file classifier is loaded before any embedding starts, so a wrong or unsafe ``--classifier``
fails in seconds rather than after hours of GPU time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text
from pipeline.core.config import (
    MODEL_KINDS,
    EmbedConfig,
    EncoderConfig,
    PredictConfig,
    Settings,
    encoder_precision,
    is_random_classifier,
)
from pipeline.core.errors import ConfigError, InputError, Interrupted, OutputIntegrityError
from pipeline.core.paths import read_json_state
from pipeline.core.run_record import stage_row

log = logging.getLogger(__name__)

DEMO_ESM_MODEL = "random:esm2_t6_8M_UR50D"
DEMO_DNABERT_MODEL = "random:dnabert-s-tiny"
DEMO_CLASSIFIER = "random"
DEMO_NOTE = (
    "DEMO RUN: random-weight encoders and a random classifier; the scores are NOT biologically meaningful"
)


def demo_config(cfg: PredictConfig) -> PredictConfig:
    """``cfg`` with the offline demo models and classifier (keeps precision/attention choices)."""
    return replace(
        cfg,
        demo=True,
        classifier=DEMO_CLASSIFIER,
        esm=replace(cfg.esm, model=DEMO_ESM_MODEL),
        dnabert=replace(cfg.dnabert, model=DEMO_DNABERT_MODEL),
    )


def make_predict_config(
    input_path: Path,
    output_dir: Path,
    settings: Settings,
    *,
    chunk_size: int,
    esm_model: str,
    dnabert_model: str,
    classifier: str,
    precision: str,
    attention: str,
    compile_: bool = False,
    gpus: tuple[int, ...] = (),
    resume: bool = False,
    demo: bool = False,
    progress: bool = True,
    keep_embeddings: bool = False,
) -> PredictConfig:
    """The `PredictConfig` of a run, built the same way by the CLI and the DAG tasks.

    Both encoders share ``precision`` (under ``fp8`` DNABERT-S runs bf16), ``attention`` and ``compile_``
    (compile stays off when ``settings.disable_compile``); token budget and worker count come from
    ``settings``; ``demo`` swaps in the offline demo models and classifier (`demo_config`).
    """
    compile_ = settings.compile_wanted(compile_)
    cfg = PredictConfig(
        input_path=input_path,
        output_dir=output_dir,
        chunk_size=chunk_size,
        esm=EncoderConfig(esm_model, precision=precision, attention=attention, compile=compile_),
        dnabert=EncoderConfig(
            dnabert_model,
            precision=encoder_precision("dnabert-s", precision),
            attention=attention,
            compile=compile_,
        ),
        classifier=classifier,
        gpus=gpus,
        token_budget=settings.token_budget,
        num_workers=settings.num_workers,
        resume=resume,
        demo=demo,
        progress=progress,
        keep_embeddings=keep_embeddings,
    )
    return demo_config(cfg) if demo else cfg


@dataclass
class EmbeddedRun:
    """What `embed_run` produced."""

    root: Path
    frames: int
    dirs: dict[str, list[Path]] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    prepare_stats: dict[str, Any] = field(default_factory=dict)
    embed_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


def encoder_embed_config(
    cfg: PredictConfig, encoder: EncoderConfig, device: str, settings: Settings
) -> EmbedConfig:
    """The `EmbedConfig` of one encoder of ``cfg`` on ``device``, with the process settings applied
    (token budget / workers when the config leaves them unset; the compile override was applied
    when the config was built, in `make_predict_config`)."""
    embed_cfg = cfg.embed_config(encoder, device)
    changes: dict[str, Any] = {}
    if embed_cfg.token_budget is None and settings.token_budget is not None:
        changes["token_budget"] = settings.token_budget
    if embed_cfg.num_workers is None and settings.num_workers is not None:
        changes["num_workers"] = settings.num_workers
    if not settings.progress:
        changes["progress"] = False
    return replace(embed_cfg, **changes) if changes else embed_cfg


def embed_stage_rows(
    record: Mapping[str, Any] | None, kind: str, spec: str, seconds: float, device: str, precision: str
) -> list[dict[str, Any]]:
    """Stage rows from an embed run record, or one synthesised row when it has none."""
    rows = []
    for row in (record or {}).get("stages", []) or []:
        if isinstance(row, dict) and row.get("stage", "embed") == "embed":
            rows.append({**stage_row("embed", float(row.get("seconds") or 0.0)), **row, "kind": kind})
    if not rows:
        rows.append(stage_row("embed", seconds, model=spec, device=device, precision=precision, kind=kind))
    return rows


INPUTS_FILE = "predict_inputs.json"  # what a run was made from; --resume must match it


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def preflight(cfg: PredictConfig) -> dict[str, Any]:
    """Checks that must fail before anything is written: the GPUs exist, each model's attention
    backend can run there, and ``--resume`` targets a run made from the same input and chunk size.

    Returns the run's input description (written to ``OUT/predict_inputs.json`` after prepare).
    Raises ConfigError, BackendUnavailableError or ResumeMismatchError.
    """
    from pipeline.core.errors import ResumeMismatchError
    from pipeline.models.attention import resolve_backend
    from pipeline.models.base import DTYPES
    from pipeline.models.fp8 import check_fp8

    if cfg.gpus:
        import torch

        visible = torch.cuda.device_count()
        missing = [g for g in cfg.gpus if g >= visible]
        if missing:
            raise ConfigError(
                f"--gpus {','.join(map(str, cfg.gpus))}: GPU {','.join(map(str, missing))} is not "
                f"visible (this machine shows {visible} CUDA device(s)); use indices 0.."
                f"{max(visible - 1, 0)}, or leave --gpus out to run on the CPU"
            )
    device = f"cuda:{cfg.gpus[0]}" if cfg.gpus else "cpu"
    for kind, encoder in (("dnabert-s", cfg.dnabert), ("esm2", cfg.esm)):
        resolve_backend(encoder.attention, device, alibi=kind == "dnabert-s", dtype=DTYPES[encoder.precision])
        if encoder.precision == "fp8":
            check_fp8(device)

    if not Path(cfg.input_path).is_file():
        raise InputError(f"input {cfg.input_path} is not a file; give a FASTA file (plain or .gz)")
    inputs = {"input_sha256": _file_sha256(Path(cfg.input_path)), "chunk_size": cfg.chunk_size}
    recorded = Path(cfg.output_dir) / INPUTS_FILE
    if cfg.resume and recorded.is_file():
        remedy = "rerun without --resume into an empty directory"
        before = read_json_state(recorded, "record of the run's inputs", remedy)
        if not isinstance(before, dict):
            raise OutputIntegrityError(f"{recorded}: not a JSON object; {remedy}")
        differs = [k for k in inputs if before.get(k) != inputs[k]]
        if differs:
            raise ResumeMismatchError(
                f"--resume into {cfg.output_dir}: the earlier run was made from another "
                f"{' and '.join('input file' if k == 'input_sha256' else 'chunk size' for k in differs)} "
                f"(chunk size then {before.get('chunk_size')}, now {cfg.chunk_size}); rerun with the same "
                "input and --chunk-size, or choose an empty output directory"
            )
    return inputs


def embed_run(cfg: PredictConfig, settings: Settings) -> EmbeddedRun:
    """prepare -> shard -> embed both models into ``cfg.output_dir`` (the layout of docs/INTERNALS.md).

    Returns the embedding directories per kind and the stage rows. With ``cfg.resume`` embedding
    continues from the finished parts of an earlier run into the same directory.
    """
    if cfg.demo and cfg.esm.model != DEMO_ESM_MODEL:
        cfg = demo_config(cfg)
    out = Path(cfg.output_dir)
    prepared = prepare_and_shard(cfg, settings, outputs=("embeddings",))
    run = EmbeddedRun(
        root=out, frames=prepared.frames, stages=list(prepared.stages), prepare_stats=prepared.prepare_stats
    )
    if not prepared.frames:
        return run
    shards = prepared.shards

    encoders = {"dnabert-s": cfg.dnabert, "esm2": cfg.esm}
    for model_kind in MODEL_KINDS:
        kind, column = model_kind.name, model_kind.column
        encoder = encoders[kind]
        kind_root = out / "embeddings" / kind
        t0 = time.perf_counter()
        if not cfg.gpus:
            from pipeline.embed.runner import embed_shard

            embed_cfg = encoder_embed_config(cfg, encoder, "cpu", settings)
            target = kind_root / shards[0].stem
            record = embed_shard(shards[0], column, kind, embed_cfg, target)
            run.dirs[kind] = [target]
            run.stages += embed_stage_rows(
                record, kind, encoder.model, time.perf_counter() - t0, "cpu", encoder.precision
            )
        else:
            from pipeline.embed.multigpu.coordinator import embed_all

            embed_cfg = encoder_embed_config(cfg, encoder, "cuda", settings)
            summary = embed_all(shards, column, kind, embed_cfg, list(cfg.gpus), kind_root)
            run.dirs[kind] = [Path(p) for p in summary.get("output_dirs", [])]
            rows: list[dict[str, Any]] = []
            for record in summary.get("records", []) or []:
                rows += embed_stage_rows(record, kind, encoder.model, 0.0, "cuda", encoder.precision)
            run.stages += rows
            # the whole-kind view (wall time over all GPUs) lives beside the per-shard stage rows,
            # so that summing stage rows never counts a shard twice
            run.embed_summaries[kind] = {
                key: summary.get(key)
                for key in (
                    "wall_seconds",
                    "embed_window_seconds",
                    "sequences",
                    "tokens",
                    "tokens_per_s",
                    "retries",
                    "failures",
                    "redistributions",
                )
            } | {"model": encoder.model, "gpus": list(cfg.gpus), "precision": encoder.precision}
        log.info(
            "embedded %d frames with %s (%s) in %.1f s",
            run.frames,
            kind,
            encoder.model,
            time.perf_counter() - t0,
        )
    return run


def _check_classifier_fit(clf, cfg: PredictConfig) -> None:
    meta = clf.meta
    if meta.chunk_size is not None and meta.chunk_size != cfg.chunk_size:
        log.warning(
            "classifier %s was trained on %d bp chunks but this run uses %d bp",
            meta.path,
            meta.chunk_size,
            cfg.chunk_size,
        )
    for kind, enc in (("dnabert-s", cfg.dnabert), ("esm2", cfg.esm)):
        trained = meta.models.get(kind)
        if trained and trained != enc.model:
            log.warning(
                "classifier %s was trained with %s embeddings from %s, this run uses %s",
                meta.path,
                kind,
                trained,
                enc.model,
            )


@dataclass(frozen=True)
class ClassifierHead:
    """The classifier head for the frame runner (picklable: workers build it themselves).

    ``spec`` is a ``--classifier`` value (``.pth``, ``.safetensors``, ``random[:seed]``); called
    with the feature width it returns the `MLPClassifier` on the CPU (the runner moves it to the
    device and runs it in fp32).
    """

    spec: str

    @property
    def name(self) -> str:
        return self.spec

    def __call__(self, width: int) -> Any:
        from pipeline.classify.mlp import load_classifier

        return load_classifier(self.spec, width)


@dataclass
class PreparedRun:
    """What `prepare_and_shard` produced."""

    root: Path
    frames: int
    shards: list[Path] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    prepare_stats: dict[str, Any] = field(default_factory=dict)


def prepare_and_shard(cfg: PredictConfig, settings: Settings, *, outputs: tuple[str, ...]) -> PreparedRun:
    """prepare -> shard into ``cfg.output_dir``: one token-balanced shard per GPU (one on the CPU).

    ``outputs`` names the subdirectories an earlier run would have filled (``scores``,
    ``embeddings``): without ``--resume`` a run that finds them refuses before prepare rewrites
    anything, so a forgotten ``--resume`` costs nothing.
    """
    from pipeline.classify.scoring import frame_ids
    from pipeline.prepare.shard import write_shards
    from pipeline.prepare.stage import prepare

    out = Path(cfg.output_dir)
    for name in outputs:
        if not cfg.resume and (out / name).is_dir() and any((out / name).iterdir()):
            raise ConfigError(
                f"{out} already holds {name} from an earlier run; pass --resume to continue "
                "it, or choose an empty output directory"
            )
    inputs = preflight(cfg)
    out.mkdir(parents=True, exist_ok=True)
    run = PreparedRun(root=out, frames=0)

    # Prepare and shard run again on --resume too: both are deterministic and cheap next to
    # embedding. `preflight` has already refused a different input or chunk size, and the runners
    # would still refuse parts whose input fingerprint does not match.
    t0 = time.perf_counter()
    prepared = prepare(cfg.input_path, out, cfg.chunk_size, progress=cfg.progress and settings.progress)
    atomic_write_text(out / INPUTS_FILE, json.dumps(inputs, indent=1))
    stats = asdict(prepared.stats) if prepared.stats is not None else {}
    run.prepare_stats = stats
    run.stages.append(prepare_stage_row(stats, time.perf_counter() - t0))
    run.frames = len(frame_ids(out))
    if run.frames == 0:
        log.warning(
            "no frame of %s survived six-frame translation (every frame has a stop codon, or "
            "the sequences are shorter than one codon); nothing to embed",
            cfg.input_path,
        )
        return run
    t0 = time.perf_counter()
    run.shards = [Path(p) for p in write_shards(out, max(1, len(cfg.gpus)), out / "shards")]
    run.stages.append(stage_row("shard", time.perf_counter() - t0, shards=len(run.shards)))
    return run


def frame_job(cfg: PredictConfig, settings: Settings, device: str) -> Any:
    """The `FrameJob` of a run on ``device`` (configs already carry the compile override)."""
    from pipeline.embed.frames import FrameJob

    return FrameJob(
        dnabert=cfg.dnabert,
        esm=cfg.esm,
        head=ClassifierHead(str(cfg.classifier)),
        device=device,
        token_budget=cfg.token_budget if cfg.token_budget is not None else settings.token_budget,
        part_size=cfg.part_size,
        resume=cfg.resume,
        keep_embeddings=cfg.keep_embeddings,
        embeddings_root=Path(cfg.output_dir) / "embeddings",
    )


def prepare_stage_row(stats: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """The ``prepare`` row of the run record from the stage's stats (``PrepareStats`` as a dict)."""
    return stage_row(
        "prepare",
        seconds,
        sequences=stats.get("records"),
        chunks=stats.get("chunks"),
        frames=stats.get("frames"),
        bases=stats.get("bases"),
        device="cpu",
    )


def shard_stage_rows(result: Mapping[str, Any], cfg: PredictConfig) -> list[dict[str, Any]]:
    """One ``embed`` row per model of a shard's `ShardResult` (seconds = that model's device
    seconds; tokens/s over them), in feature order."""
    encoders = {"dnabert-s": cfg.dnabert, "esm2": cfg.esm}
    rows = []
    for kind in MODEL_KINDS:
        m = (result.get("models") or {}).get(kind.name) or {}
        seconds = m.get("device_seconds")
        tokens = int(m.get("tokens") or 0)
        rows.append(
            stage_row(
                "embed",
                float(seconds or 0.0),
                model=encoders[kind.name].model,
                sequences=m.get("sequences"),
                tokens=tokens,
                tokens_per_s=round(tokens / seconds, 1) if seconds else None,
                backend=m.get("backend"),
                precision=m.get("precision"),
                device=result.get("device"),
                kind=kind.name,
                shard=result.get("shard"),
                device_seconds=seconds,
                token_budget=m.get("token_budget"),
                batches=m.get("batches"),
                gpu_busy_fraction=result.get("busy_fraction"),
                parts_written=result.get("parts_written"),
                parts_skipped=result.get("parts_skipped"),
            )
        )
    rows[-1]["head_device_seconds"] = result.get("head_device_seconds")
    return rows


@dataclass
class ScoredRun:
    """What `score_run` produced: score part directories, stage rows, the workers' summary."""

    dirs: list[Path] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, Any] = field(default_factory=dict)
    head_seconds: float = 0.0


def score_run(cfg: PredictConfig, settings: Settings, prepared: PreparedRun) -> ScoredRun:
    """Score every shard: one resident worker per GPU (`score_all`), or this process on the CPU
    (the same `FrameWork` the workers run). Shows one progress display for the whole run."""
    from pipeline.embed.multigpu.executor import StopSignals
    from pipeline.embed.multigpu.worker import FrameWork, use_compile_cache
    from pipeline.embed.progress import ProgressFile, RunProgress

    root = Path(cfg.output_dir) / "scores"
    progress = RunProgress(prepared.frames, enabled=cfg.progress and settings.progress)
    t0 = time.perf_counter()
    try:
        if not cfg.gpus:
            shard = prepared.shards[0]
            job = frame_job(cfg, settings, "cpu")
            use_compile_cache(settings.compile_cache_dir)
            with StopSignals(abort_on_second=True).installed() as stop:
                result = FrameWork(job).run(
                    shard,
                    root / shard.stem,
                    device="cpu",
                    resume=cfg.resume,
                    stop=stop.event,
                    progress=ProgressFile(None, callback=lambda p: progress.update(shard.stem, p)),
                )
            records = [result]
            summary: dict[str, Any] = {
                "output_dirs": [str(root / shard.stem)],
                "workers": [],
                "retries": 0,
                "failures": 0,
                "redistributions": [],
            }
        else:
            from pipeline.embed.multigpu.coordinator import score_all

            summary = score_all(
                prepared.shards,
                frame_job(cfg, settings, "cuda"),
                list(cfg.gpus),
                root,
                progress=progress,
                compile_cache_dir=settings.compile_cache_dir,
            )
            records = list(summary.get("records") or [])
    finally:
        progress.close()
    wall = time.perf_counter() - t0
    run = ScoredRun(dirs=[Path(p) for p in summary.get("output_dirs", [])])
    for result in records:
        run.stages += shard_stage_rows(result, cfg)
        run.head_seconds += float(result.get("head_device_seconds") or 0.0)
    per_worker = summary.get("workers") or [
        {
            "worker": 0,
            "device": "cpu",
            "tasks": [Path(r["shard"]).stem for r in records],
            "gpu_busy_fraction": r.get("busy_fraction"),
            "embed_started_at": r.get("started_at"),
            "embed_finished_at": r.get("finished_at"),
        }
        for r in records
    ]
    for w in per_worker:
        loads = [
            float((r.get("timings") or {}).get("load_models_s") or 0.0)
            for r in records
            if Path(r.get("out_dir", "")).name in w.get("tasks", [])
        ]
        w["load_seconds"] = round(max(loads), 3) if loads else None
    run.workers = {
        "wall_seconds": round(wall, 3),
        "gpus": list(cfg.gpus),
        "n_workers": max(1, len(cfg.gpus)),
        "embed_window_seconds": summary.get("embed_window_seconds"),
        "finish_spread_seconds": summary.get("finish_spread_seconds"),
        "retries": summary.get("retries", 0),
        "failures": summary.get("failures", 0),
        "redistributions": summary.get("redistributions", []),
        "per_worker": per_worker,
    }
    if not cfg.gpus and records:
        r = records[0]
        if r.get("started_at") and r.get("finished_at"):
            run.workers["embed_window_seconds"] = round(r["finished_at"] - r["started_at"], 3)
        run.workers["finish_spread_seconds"] = 0.0
    return run


def assemble_scores(prepared_dir: Path, score_dirs: list[Path], out_path: Path) -> int:
    """Write ``frame_scores.parquet`` in ``protein.faa`` order from the score part directories;
    returns the number of frames. Fails (`OutputIntegrityError`) unless every frame has exactly
    one score."""
    import numpy as np

    from pipeline.classify.scoring import frame_ids, join_positions, write_scores
    from pipeline.embed.frames import read_scores

    frames = frame_ids(prepared_dir)
    if not frames:
        write_scores([], np.empty((0, 2), dtype=np.float32), out_path)
        return 0
    ids, scores = read_scores(score_dirs)
    write_scores(frames, scores[join_positions(frames, ids, "score")], out_path)
    return len(frames)


def run_predict(cfg: PredictConfig, settings: Settings) -> dict[str, Any]:
    """Run the whole pipeline; write the original-format outputs and ``run_record.json``.

    Returns the run record (also written to ``OUT/run_record.json``) with ``outputs`` (name -> path),
    ``counts`` and ``workers`` (wall time of the scoring phase, per-worker GPU busy fraction, the
    spread of the workers' finish times).
    """
    from pipeline.classify.mlp import load_classifier
    from pipeline.core.runinfo import new_run_id, utc_now

    if cfg.demo:
        cfg = demo_config(cfg)
        log.warning(DEMO_NOTE)
    if cfg.input_path is None or not Path(cfg.input_path).exists():
        raise ConfigError(f"input {cfg.input_path} does not exist; give a FASTA file (plain or .gz)")
    run_id = new_run_id()
    started = utc_now()
    out = Path(cfg.output_dir)

    from pipeline.run.preflight import preflight_models

    preflight_models(cfg)  # specifiers and classifier width, before any embedding
    classifier: Any = cfg.classifier
    if not is_random_classifier(cfg.classifier):
        classifier = load_classifier(cfg.classifier)  # fail before any embedding work
        _check_classifier_fit(classifier, cfg)

    from pipeline.embed.multigpu.executor import StopSignals

    # One handler for the whole run: a signal in any stage lets that stage publish what it started
    # (every stage writes all or nothing) and stops at the next stage boundary with `Interrupted`.
    # Scoring installs its own handler inside this one, which stops after the current part.
    with StopSignals(abort_on_second=True).installed() as stop:
        prepared = prepare_and_shard(cfg, settings, outputs=("scores", "embeddings"))
        _stop_if_asked(stop, "prepare and shard")
        stages = list(prepared.stages)
        scored = ScoredRun()
        if prepared.frames:
            scored = score_run(cfg, settings, prepared)
            stages += scored.stages
        _stop_if_asked(stop, "scoring")
        outputs, stages = _classify_and_merge(cfg, out, prepared, scored, stages)
        _stop_if_asked(stop, "merge")
    return _finish(cfg, out, run_id, started, classifier, prepared, scored, outputs, stages)


def _stop_if_asked(stop: Any, after: str) -> None:
    if stop.is_set():
        raise Interrupted(
            f"stopped by signal {stop.first} after {after} (its outputs are complete); "
            "rerun with --resume to continue"
        )


def _classify_and_merge(
    cfg: PredictConfig, out: Path, prepared: PreparedRun, scored: ScoredRun, stages: list
) -> tuple[dict[str, Path], list]:
    """frame_scores.parquet from the score parts, then the original-format outputs."""
    from pipeline.classify.merge import merge
    from pipeline.classify.scoring import SCORES_FILE

    scores_path = out / SCORES_FILE
    t0 = time.perf_counter()
    assemble_scores(out, scored.dirs, scores_path)
    # the head ran on the GPU inside the workers: its device seconds plus the assembly
    stages.append(
        stage_row(
            "classify",
            time.perf_counter() - t0 + scored.head_seconds,
            model=str(cfg.classifier),
            sequences=prepared.frames,
            device=f"cuda:{cfg.gpus[0]}" if cfg.gpus else "cpu",
            precision="fp32",
            head_device_seconds=round(scored.head_seconds, 6),
        )
    )
    t0 = time.perf_counter()
    outputs = merge(scores_path, out, out)
    stages.append(stage_row("merge", time.perf_counter() - t0, sequences=prepared.frames))
    return outputs, stages


def _finish(
    cfg: PredictConfig,
    out: Path,
    run_id: str,
    started: str,
    classifier: Any,
    prepared: PreparedRun,
    scored: ScoredRun,
    outputs: dict[str, Path],
    stages: list,
) -> dict[str, Any]:
    """Write ``run_record.json`` (the run is finished once it exists) and return it as a dict."""
    from pipeline.classify.mlp import meta_dict
    from pipeline.core.run_record import RunRecord, StageRow, write_run_record
    from pipeline.core.runinfo import environment_info, utc_now

    counts = _counts(outputs)
    counts["frames"] = prepared.frames
    extra: dict[str, Any] = {
        "demo": bool(cfg.demo),
        "classifier": (
            meta_dict(classifier) if not isinstance(classifier, str) else {"source": "random", "path": None}
        ),
        "outputs": {name: str(path) for name, path in outputs.items()},
        "workers": scored.workers,
        "counts": counts,
    }
    if cfg.demo:
        extra["note"] = DEMO_NOTE
    if prepared.frames == 0:
        empty = "no frame survived six-frame translation; outputs hold headers only"
        extra["note"] = f"{extra['note']}; {empty}" if cfg.demo else empty
    record = RunRecord(
        run_id=run_id,
        kind="predict",
        started_at=started,
        finished_at=utc_now(),
        environment=environment_info(),
        config=json.loads(json.dumps(asdict(cfg), default=str)),
        stages=[StageRow.from_dict(s) for s in stages],
        extra=extra,
    )
    write_run_record(out / "run_record.json", record)
    log.info(
        "predict finished: %d frames, %d chunks (%d viral), %d records -> %s",
        prepared.frames,
        counts["chunks"],
        counts["viral_chunks"],
        counts["records"],
        out,
    )
    if cfg.demo:
        log.warning(DEMO_NOTE)
    return record.to_dict()


def _counts(outputs: dict[str, Path]) -> dict[str, int]:
    import pandas as pd

    cons = pd.read_csv(outputs["highestscore"], sep="\t", dtype={"Modified_ID": str})
    summary = pd.read_csv(outputs["summary"], sep="\t", dtype={"record_id": str})
    viral = cons["Is_Virus"].astype(str).eq("True").sum() if len(cons) else 0
    return {
        "chunks": int(len(cons)),
        "viral_chunks": int(viral),
        "records": int(len(summary)),
        "viral_records": int((summary["call"] == "virus").sum()) if len(summary) else 0,
    }


__all__ = [
    "DEMO_NOTE",
    "ClassifierHead",
    "EmbeddedRun",
    "PreparedRun",
    "ScoredRun",
    "assemble_scores",
    "demo_config",
    "embed_run",
    "embed_stage_rows",
    "encoder_embed_config",
    "frame_job",
    "make_predict_config",
    "prepare_and_shard",
    "prepare_stage_row",
    "run_predict",
    "score_run",
    "shard_stage_rows",
    "stage_row",
]
