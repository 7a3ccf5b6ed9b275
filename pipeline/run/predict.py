"""A whole prediction run on one machine: prepare -> shard -> embed (DNABERT-S, ESM-2) -> classify -> merge.

On CPU (``cfg.gpus`` empty) everything runs in this process on one shard. With GPUs the frames are
split into one length-balanced shard per GPU and `pipeline.embed.multigpu.coordinator.embed_all`
runs one worker process per GPU (retries, redistribution, resume). Every stage's wall time lands in
``OUT/run_record.json`` (schema ``virnucpro.run/1``, see docs/INTERNALS.md).

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
from pipeline.core.config import EmbedConfig, EncoderConfig, PredictConfig, Settings, is_random_classifier
from pipeline.core.errors import ConfigError, InputError, OutputIntegrityError
from pipeline.core.paths import read_json_state

log = logging.getLogger(__name__)

RUN_SCHEMA = "virnucpro.run/1"
DEMO_ESM_MODEL = "random:esm2_t6_8M_UR50D"
DEMO_DNABERT_MODEL = "random:dnabert-s-tiny"
DEMO_CLASSIFIER = "random"
DEMO_NOTE = (
    "DEMO RUN: random-weight encoders and a random classifier; the scores are NOT biologically meaningful"
)
# (kind, shard column); DNABERT-S first, matching the concatenation order of the features.
KINDS: tuple[tuple[str, str], ...] = (("dnabert-s", "nucleotide"), ("esm2", "protein"))


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
) -> PredictConfig:
    """The `PredictConfig` of a run, built the same way by the CLI and the DAG tasks.

    Both encoders share ``precision``, ``attention`` and ``compile_`` (compile stays off when
    ``settings.disable_compile``); token budget and worker count come from ``settings``;
    ``demo`` swaps in the offline demo models and classifier (`demo_config`).
    """
    compile_ = compile_ and not settings.disable_compile
    cfg = PredictConfig(
        input_path=input_path,
        output_dir=output_dir,
        chunk_size=chunk_size,
        esm=EncoderConfig(esm_model, precision=precision, attention=attention, compile=compile_),
        dnabert=EncoderConfig(dnabert_model, precision=precision, attention=attention, compile=compile_),
        classifier=classifier,
        gpus=gpus,
        token_budget=settings.token_budget,
        num_workers=settings.num_workers,
        resume=resume,
        demo=demo,
        progress=progress,
    )
    return demo_config(cfg) if demo else cfg


def stage_row(stage: str, seconds: float, **extra: Any) -> dict[str, Any]:
    """A stage row of the run record (the keys of docs/INTERNALS.md)."""
    row: dict[str, Any] = {
        "stage": stage,
        "model": None,
        "seconds": round(seconds, 6),
        "sequences": None,
        "tokens": None,
        "tokens_per_s": None,
        "packing_efficiency": None,
        "backend": None,
        "precision": None,
        "device": None,
    }
    row.update(extra)
    return row


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
    (compile off under ``disable_compile``; token budget / workers when the config leaves them unset)."""
    if settings.disable_compile and encoder.compile:
        encoder = replace(encoder, compile=False)
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
    from pipeline.prepare.stage import prepare

    if cfg.demo and cfg.esm.model != DEMO_ESM_MODEL:
        cfg = demo_config(cfg)
    out = Path(cfg.output_dir)
    embeddings = out / "embeddings"
    if not cfg.resume and embeddings.is_dir() and any(embeddings.iterdir()):
        # checked before prepare rewrites anything, so a forgotten --resume costs nothing
        raise ConfigError(
            f"{out} already holds embeddings from an earlier run; pass --resume to continue "
            "it, or choose an empty output directory"
        )
    inputs = preflight(cfg)
    out.mkdir(parents=True, exist_ok=True)
    run = EmbeddedRun(root=out, frames=0)

    # Prepare and shard run again on --resume too: both are deterministic and cheap next to
    # embedding. `preflight` has already refused a different input or chunk size, and the embed
    # stage would still refuse parts whose input fingerprint does not match.
    t0 = time.perf_counter()
    prepared = prepare(cfg.input_path, out, cfg.chunk_size, progress=cfg.progress and settings.progress)
    atomic_write_text(out / INPUTS_FILE, json.dumps(inputs, indent=1))
    stats = asdict(prepared.stats) if prepared.stats is not None else {}
    run.prepare_stats = stats
    run.stages.append(
        stage_row(
            "prepare",
            time.perf_counter() - t0,
            sequences=stats.get("records"),
            chunks=stats.get("chunks"),
            frames=stats.get("frames"),
            bases=stats.get("bases"),
            device="cpu",
        )
    )
    from pipeline.classify.scoring import frame_ids

    run.frames = len(frame_ids(out))
    if run.frames == 0:
        log.warning(
            "no frame of %s survived six-frame translation (every frame has a stop codon, or "
            "the sequences are shorter than one codon); nothing to embed",
            cfg.input_path,
        )
        return run

    from pipeline.prepare.shard import write_shards

    n_shards = max(1, len(cfg.gpus))
    shard_dir = out / "shards"
    t0 = time.perf_counter()
    shards = [Path(p) for p in write_shards(out, n_shards, shard_dir)]
    run.stages.append(stage_row("shard", time.perf_counter() - t0, shards=len(shards)))

    encoders = {"dnabert-s": cfg.dnabert, "esm2": cfg.esm}
    for kind, column in KINDS:
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


def run_predict(cfg: PredictConfig, settings: Settings) -> dict[str, Any]:
    """Run the whole pipeline; write the original-format outputs and ``run_record.json``.

    Returns the run record (also written to ``OUT/run_record.json``) with ``outputs`` (name -> path)
    and ``counts`` added.
    """
    from pipeline.classify.merge import merge
    from pipeline.classify.mlp import load_classifier, meta_dict
    from pipeline.classify.scoring import SCORES_FILE, classify, write_scores
    from pipeline.core.runinfo import environment_info, new_run_id, utc_now

    if cfg.demo:
        cfg = demo_config(cfg)
        log.warning(DEMO_NOTE)
    if cfg.input_path is None or not Path(cfg.input_path).exists():
        raise ConfigError(f"input {cfg.input_path} does not exist; give a FASTA file (plain or .gz)")
    run_id = new_run_id()
    started = utc_now()
    out = Path(cfg.output_dir)

    classifier: Any = cfg.classifier
    if not is_random_classifier(cfg.classifier):
        classifier = load_classifier(cfg.classifier)  # fail before any embedding work
        _check_classifier_fit(classifier, cfg)

    run = embed_run(cfg, settings)
    stages = list(run.stages)
    scores_path = out / SCORES_FILE
    mlp_device = f"cuda:{cfg.gpus[0]}" if cfg.gpus else "cpu"
    t0 = time.perf_counter()
    if run.frames == 0:
        import numpy as np

        write_scores([], np.empty((0, 2), dtype=np.float32), scores_path)
    else:
        classify(out, run.dirs["dnabert-s"], run.dirs["esm2"], classifier, scores_path, device=mlp_device)
    stages.append(
        stage_row(
            "classify",
            time.perf_counter() - t0,
            model=str(cfg.classifier),
            sequences=run.frames,
            device=mlp_device,
            precision="fp32",
        )
    )
    t0 = time.perf_counter()
    outputs = merge(scores_path, out, out)
    stages.append(stage_row("merge", time.perf_counter() - t0, sequences=run.frames))

    counts = _counts(outputs)
    counts["frames"] = run.frames
    record: dict[str, Any] = {
        "schema": RUN_SCHEMA,
        "run_id": run_id,
        "kind": "predict",
        "started_at": started,
        "finished_at": utc_now(),
        "environment": environment_info(),
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "stages": stages,
        "demo": bool(cfg.demo),
        "classifier": (
            meta_dict(classifier) if not isinstance(classifier, str) else {"source": "random", "path": None}
        ),
        "outputs": {name: str(path) for name, path in outputs.items()},
        "embed_summaries": run.embed_summaries,
        "counts": counts,
    }
    if cfg.demo:
        record["note"] = DEMO_NOTE
    if run.frames == 0:
        empty = "no frame survived six-frame translation; outputs hold headers only"
        record["note"] = f"{record['note']}; {empty}" if cfg.demo else empty
    atomic_write_text(out / "run_record.json", json.dumps(record, indent=2, default=str))
    log.info(
        "predict finished: %d frames, %d chunks (%d viral), %d records -> %s",
        run.frames,
        counts["chunks"],
        counts["viral_chunks"],
        counts["records"],
        out,
    )
    if cfg.demo:
        log.warning(DEMO_NOTE)
    return record


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
    "EmbeddedRun",
    "demo_config",
    "embed_run",
    "embed_stage_rows",
    "encoder_embed_config",
    "make_predict_config",
    "run_predict",
    "stage_row",
]
