"""The frame runner: one shard's frames through DNABERT-S -> ESM-2 -> the classifier head, on one device.

This is what a resident GPU worker (`pipeline.embed.multigpu.worker`), the CPU path of
``virnucpro predict`` and the DAG's embed tasks all run (`score_shard`). Flow:

    read the shard (id, nucleotide, protein) -> tokenize both columns in this process (the
    DNABERT-S tokenizer is a parallel Rust one, the ESM-2 one a byte lookup: no worker processes) ->
    order rows by ESM-2 tokens, longest first -> parts of ``part_size`` rows -> resume: keep the
    valid parts of the output directory -> for each part still to do: first-fit-decreasing pack
    the part for each model, issue every batch (pinned host memory, non-blocking copies), gather
    the pooled rows in part order on the device, concatenate (DNA first) and run the fp32 head,
    copy the scores (and, when asked, the embeddings) to pinned host memory. The host waits for
    part p only after part p+1 has been issued, so the device always has queued work while the
    host checks and writes a part (on a writer thread, atomically, completion marker last).

Outputs: ``out_dir`` is a part directory (`pipeline.embed.parts`) whose vectors are the
``(n, 2) float32`` softmax scores ``[P(others), P(virus)]``; with ``keep_embeddings`` the pooled
embeddings go beside it in the same part layout (float32, `pipeline.embed.parts` format), one
directory per model. SIGTERM/SIGINT: the parts already issued are finished and written, then
`Interrupted` is raised (also when those were the last parts), so ``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.core.config import MODEL_KINDS, EncoderConfig
from pipeline.core.errors import ConfigError, InputError, Interrupted, NumericalError
from pipeline.embed.loader import TokenArena, collate_packed, input_fingerprint, read_shard, tokenize_shard
from pipeline.embed.parts import FORMAT, BackgroundWriter, write_metadata, write_part
from pipeline.embed.planning import choose_token_budget, length_sorted_order, plan_batches
from pipeline.embed.progress import ProgressFile, TaskProgress
from pipeline.embed.resume import check_output_dir, sweep_valid_parts
from pipeline.embed.timeline import DeviceTimeline, TimelineSummary

log = logging.getLogger(__name__)

ORDER = "esm2-token-length-desc-stable"
SCORES_KIND = "scores"
#: Parts issued to the device before the host waits for the oldest one.
PARTS_AHEAD = 1
#: (kind, shard column) from the model-kind registry, in feature order (DNABERT-S first).
MODEL_COLUMNS: tuple[tuple[str, str], ...] = tuple((k.name, k.column) for k in MODEL_KINDS)


class HeadFactory(Protocol):
    """Builds the classifier head for ``width``-wide features (picklable; sent to workers).

    The module maps ``(N, width) float32`` to logits ``(N, 2)``; `score_shard` runs it in fp32 and
    takes the softmax. ``name`` goes into the output metadata (resume refuses another head).
    """

    name: str

    def __call__(self, width: int) -> Any: ...


@dataclass(frozen=True)
class FrameJob:
    """How to score one shard (everything but the shard and the output directory; picklable).

    Attributes:
        dnabert / esm: the two encoders.
        head: builds the classifier head (`HeadFactory`).
        device: torch device string.
        token_budget: tokens per packed batch for both models (None: chosen from free memory).
        part_size: frames per output part (the unit of writes and of resume).
        resume: keep valid parts of an existing output directory.
        keep_embeddings: also write both models' pooled embeddings (float32 parts).
        embeddings_root: where kept embeddings go: ``<root>/<kind>/<out_dir name>``.
        disable_compile: ``Settings.disable_compile`` (already applied to the encoder configs by
            the entry point; kept here for the record).
    """

    dnabert: EncoderConfig
    esm: EncoderConfig
    head: Any
    device: str = "cpu"
    token_budget: int | None = None
    part_size: int = 4096
    resume: bool = False
    keep_embeddings: bool = False
    embeddings_root: Path | None = None

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ConfigError(f"part_size={self.part_size} must be >= 1")
        if self.keep_embeddings and self.embeddings_root is None:
            raise ConfigError("keep_embeddings needs embeddings_root (where the embedding parts go)")

    def models_key(self) -> tuple:
        """What identifies the loaded models (a resident worker reuses them while this is equal)."""
        return (self.dnabert, self.esm, getattr(self.head, "name", repr(self.head)), self.device)


@dataclass
class FrameModels:
    """The three models of a worker, loaded once per process."""

    dnabert: Any
    esm: Any
    head: Any
    head_name: str
    device: Any
    load_seconds: float = 0.0

    @property
    def encoders(self) -> dict[str, Any]:
        return {"dnabert-s": self.dnabert, "esm2": self.esm}


def resolve_device(name: str) -> Any:
    import torch

    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use the CPU")
        if device.index is None:  # events and mem_get_info want an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def load_frame_models(job: FrameJob) -> FrameModels:
    """DNABERT-S, ESM-2 and the fp32 head on ``job.device``, in eval mode."""
    from pipeline.models.registry import load_encoder

    t0 = time.perf_counter()
    device = resolve_device(job.device)
    dnabert = load_encoder("dnabert-s", job.dnabert, device).eval()
    esm = load_encoder("esm2", job.esm, device).eval()
    width = int(dnabert.info.hidden_size) + int(esm.info.hidden_size)
    head = job.head(width).to(device).float().eval()
    return FrameModels(
        dnabert, esm, head, str(getattr(job.head, "name", job.head)), device, time.perf_counter() - t0
    )


@dataclass
class ModelStats:
    """Per-model numbers of one shard run."""

    sequences: int = 0
    tokens: int = 0
    batches: int = 0
    token_budget: int = 0
    backend: str = ""
    precision: str = ""
    device_seconds: float | None = None


@dataclass
class ShardResult:
    """What `score_shard` did (typed; the worker sends it back as JSON).

    Attributes:
        status: ``complete`` or ``interrupted``.
        frames: rows of the shard; frames_scored: rows scored by this run (skipped parts excluded).
        parts / parts_written / parts_skipped: part counts.
        models: per model (``dnabert-s``, ``esm2``) sequences, tokens, batches, device seconds.
        head_device_seconds: device seconds of the classifier head.
        busy_fraction: device busy share from the first to the last batch (CUDA events; None on CPU).
        window_s: that window in seconds.
        started_at / finished_at: epoch seconds of the first issued batch and of the last part written.
        timings: host seconds per phase (read, tokenize, load, plan, run, write).
        out_dir / embedding_dirs: where the parts are.
    """

    shard: str
    out_dir: str
    status: str = "complete"
    frames: int = 0
    frames_scored: int = 0
    parts: int = 0
    parts_written: int = 0
    parts_skipped: int = 0
    models: dict[str, ModelStats] = field(default_factory=dict)
    head_device_seconds: float | None = None
    busy_fraction: float | None = None
    window_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    embedding_dirs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardResult:
        data = dict(data)
        models = {k: ModelStats(**v) for k, v in (data.pop("models", None) or {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known}, models=models)


# ----------------------------------------------------------------------------------------------
# plan


@dataclass
class _Plan:
    """Rows, tokens and parts of one shard, and what the output directories already hold."""

    ids: list[str]
    arenas: dict[str, TokenArena]
    part_rows: list[np.ndarray]
    part_ids: list[list[str]]
    todo: list[int]
    budgets: dict[str, int]
    dirs: dict[str, Path]  # "scores" and, when kept, each model kind
    metadata: dict[str, dict[str, Any]]  # per directory

    def tokens(self, kind: str, rows: np.ndarray) -> int:
        return int(self.arenas[kind].lengths[rows].sum())


def _wanted(
    kind: str,
    model: str,
    column: str,
    precision: str,
    seed: int,
    fingerprint: str,
    n_rows: int,
    part_size: int,
    shard: Path,
    dim: int,
    repr_layer: int | None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": kind,
        "model": model,
        "column": column,
        "precision": precision,
        "seed": seed,
        "fingerprint": fingerprint,
        "n_rows": n_rows,
        "part_size": part_size,
        "order": ORDER,
        "dtype": "float32",
        "shard": str(shard),
        "hidden_size": dim,
        "repr_layer": repr_layer,
    }


def _plan(shard: Path, job: FrameJob, models: FrameModels, out_dir: Path, timings: dict[str, float]) -> _Plan:
    import torch

    t = time.perf_counter()
    columns: dict[str, list[str]] = {}
    ids: list[str] = []
    for kind, column in MODEL_COLUMNS:
        ids, columns[kind] = read_shard(shard, column)
    timings["read_s"] = time.perf_counter() - t

    t = time.perf_counter()
    arenas: dict[str, TokenArena] = {}
    for kind, _ in MODEL_COLUMNS:
        encoder = models.encoders[kind]
        arenas[kind] = tokenize_shard(encoder.tokenizer, columns[kind], num_workers=0)
        too_long = np.flatnonzero(arenas[kind].lengths > encoder.info.max_tokens)
        if too_long.size:
            r = int(too_long[0])
            raise InputError(
                f"shard {shard}: {too_long.size} row(s) exceed {kind}'s {encoder.info.max_tokens} "
                f"tokens, e.g. {ids[r]!r} with {int(arenas[kind].lengths[r])}; use a smaller "
                "--chunk-size"
            )
    timings["tokenize_s"] = time.perf_counter() - t

    order = length_sorted_order(arenas["esm2"].lengths)
    part_rows = [order[s : s + job.part_size] for s in range(0, order.size, job.part_size)]
    part_ids = [[ids[r] for r in rows.tolist()] for rows in part_rows]

    fingerprints = {kind: input_fingerprint(ids, columns[kind]) for kind, _ in MODEL_COLUMNS}
    frame_fp = input_fingerprint(ids, [f"{a}\t{b}" for a, b in zip(columns["dnabert-s"], columns["esm2"])])
    cfgs = {"dnabert-s": job.dnabert, "esm2": job.esm}
    composite = f"{models.head_name}|dnabert-s={job.dnabert.model}|esm2={job.esm.model}"
    precision = f"dnabert-s={job.dnabert.precision},esm2={job.esm.precision}"
    dirs = {SCORES_KIND: out_dir}
    wanted = {
        SCORES_KIND: _wanted(
            SCORES_KIND,
            composite,
            "frame",
            precision,
            job.esm.seed,
            frame_fp,
            len(ids),
            job.part_size,
            shard,
            2,
            None,
        )
    }
    if job.keep_embeddings:
        assert job.embeddings_root is not None
        for kind, column in MODEL_COLUMNS:
            info = models.encoders[kind].info
            dirs[kind] = Path(job.embeddings_root) / kind / out_dir.name
            wanted[kind] = _wanted(
                kind,
                cfgs[kind].model,
                column,
                cfgs[kind].precision,
                cfgs[kind].seed,
                fingerprints[kind],
                len(ids),
                job.part_size,
                shard,
                info.hidden_size,
                info.repr_layer,
            )
    valid: set[int] | None = None
    for name, directory in dirs.items():
        existing = check_output_dir(directory, wanted[name], resume=job.resume)
        directory.mkdir(parents=True, exist_ok=True)
        dim = int(wanted[name]["hidden_size"])
        done = (
            sweep_valid_parts(directory, part_ids, dim=dim, fingerprint=wanted[name]["fingerprint"])
            if existing is not None
            else set()
        )
        valid = done if valid is None else valid & done
    todo = [p for p in range(len(part_rows)) if p not in (valid or set())]

    metadata: dict[str, dict[str, Any]] = {}
    for name, directory in dirs.items():
        meta = {**wanted[name], "n_parts": len(part_rows), "complete": False, "device": str(models.device)}
        if name == SCORES_KIND:
            meta.update(
                columns=["score_others", "score_virus"],
                head=models.head_name,
                models={k: cfgs[k].model for k in cfgs},
                backends={k: models.encoders[k].backend for k in cfgs},
            )
        else:
            meta.update(
                backend=models.encoders[name].backend,
                num_layers=models.encoders[name].info.num_layers,
                params=models.encoders[name].info.params,
            )
        write_metadata(directory, meta)
        metadata[name] = meta

    device = models.device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    budgets = {}
    for kind, _ in MODEL_COLUMNS:
        info = models.encoders[kind].info
        # both models stay resident: each plans with half of the free memory
        budgets[kind] = choose_token_budget(
            device_type=device.type,
            hidden_size=info.hidden_size,
            dtype_bytes=2 if cfgs[kind].precision in ("fp16", "bf16") else 4,
            free_bytes=None if free is None else free // 2,
            override=job.token_budget,
            max_budget=models.encoders[kind].best_token_budget,
        )
    return _Plan(ids, arenas, part_rows, part_ids, todo, budgets, dirs, metadata)


# ----------------------------------------------------------------------------------------------
# run: issue parts to the device, collect them one part behind


@dataclass
class _PartInFlight:
    index: int
    rows: np.ndarray
    tokens: dict[str, int]
    out: Any  # (n, 3) float32 host: P(others), P(virus), row finite flag
    embeddings: dict[str, Any]  # kind -> (n, D) float32 host (keep_embeddings only)
    ready: Any  # CUDA event after the device->host copies, or None on CPU


class _PartIssuer:
    """Issues one part's batches for both models and the head, without waiting for the device."""

    def __init__(
        self,
        models: FrameModels,
        plan: _Plan,
        timeline: DeviceTimeline,
        keep: bool,
        stats: dict[str, ModelStats],
    ) -> None:
        import torch

        self.torch = torch
        self.models = models
        self.plan = plan
        self.timeline = timeline
        self.keep = keep
        self.stats = stats
        self.cuda = models.device.type == "cuda"

    def _to_device(self, tensor: Any) -> Any:
        if not self.cuda:
            return tensor
        return tensor.pin_memory().to(self.models.device, non_blocking=True)

    def _embed(self, kind: str, rows: np.ndarray) -> Any:
        """``(n, D) float32`` pooled rows of ``rows`` (part order), on the device."""
        torch = self.torch
        encoder = self.models.encoders[kind]
        arena = self.plan.arenas[kind]
        local = plan_batches(arena.lengths[rows], self.plan.budgets[kind])
        pooled, order = [], []
        for batch_local in local:
            picked = np.asarray(batch_local, dtype=np.int64)
            batch = collate_packed(arena, rows[picked])
            ids = self._to_device(batch.input_ids)
            cu = self._to_device(batch.cu_seqlens)
            with self.timeline.span(kind):
                pooled.append(encoder.embed_packed(ids, cu, batch.max_seqlen))
            order.append(picked)
            st = self.stats[kind]
            st.batches += 1
            st.sequences += int(picked.size)
            st.tokens += batch.tokens
        index = self._to_device(torch.from_numpy(np.concatenate(order)))
        out = torch.empty((rows.size, pooled[0].shape[1]), dtype=torch.float32, device=self.models.device)
        out[index] = torch.cat(pooled).float()
        return out

    def issue(self, p: int) -> _PartInFlight:
        torch = self.torch
        rows = self.plan.part_rows[p]
        feats = {kind: self._embed(kind, rows) for kind, _ in MODEL_COLUMNS}
        with self.timeline.span("head"):
            x = torch.cat([feats["dnabert-s"], feats["esm2"]], dim=1)
            probs = torch.softmax(self.models.head(x).float(), dim=1)
            finite = torch.isfinite(x).all(dim=1, keepdim=True).to(torch.float32)
            result = torch.cat([probs, finite], dim=1)
        host_kw = {"pin_memory": True} if self.cuda else {}
        out = torch.empty(result.shape, dtype=torch.float32, **host_kw)
        out.copy_(result, non_blocking=self.cuda)
        embeddings = {}
        if self.keep:
            for kind, tensor in feats.items():
                embeddings[kind] = torch.empty(tensor.shape, dtype=torch.float32, **host_kw)
                embeddings[kind].copy_(tensor, non_blocking=self.cuda)
        ready = None
        if self.cuda:
            ready = torch.cuda.Event()
            ready.record()
        tokens = {kind: self.plan.tokens(kind, rows) for kind, _ in MODEL_COLUMNS}
        return _PartInFlight(p, rows, tokens, out, embeddings, ready)


class PartWriter(BackgroundWriter):
    """Checks a finished part and writes it (scores and kept embeddings) on the writer thread."""

    def __init__(self, plan: _Plan, shard_name: str) -> None:
        super().__init__()
        self.plan = plan
        self.shard_name = shard_name

    def submit(self, part: _PartInFlight) -> None:
        if part.ready is not None:
            part.ready.synchronize()
        out = part.out.numpy()
        bad = np.flatnonzero(out[:, 2] < 0.5) if out.size else np.empty(0, np.int64)
        bad = np.union1d(bad, np.flatnonzero(~np.isfinite(out[:, :2]).all(axis=1)))
        if bad.size:
            names = [self.plan.part_ids[part.index][i] for i in bad[:5]]
            raise NumericalError(
                f"part {part.index} of {self.shard_name}: {bad.size} frame(s) got NaN/Inf "
                f"embeddings or scores, e.g. {names}; rerun with --precision bf16 or fp32"
            )
        scores = np.ascontiguousarray(out[:, :2])
        vectors = {kind: t.numpy() for kind, t in part.embeddings.items()}
        self.enqueue(part.index, self._write, part.index, scores, vectors)

    def _write(self, p: int, scores: np.ndarray, vectors: dict[str, np.ndarray]) -> None:
        ids = self.plan.part_ids[p]
        fingerprints = {name: meta["fingerprint"] for name, meta in self.plan.metadata.items()}
        for kind, array in vectors.items():  # embeddings first: the scores marker vouches for a whole part
            write_part(self.plan.dirs[kind], p, ids, array, fingerprints[kind])
        write_part(self.plan.dirs[SCORES_KIND], p, ids, scores, fingerprints[SCORES_KIND])


class _Counter:
    """Frames and tokens done so far, reported after each part."""

    def __init__(self, plan: _Plan, progress: ProgressFile) -> None:
        todo = set(plan.todo)
        self.progress = progress
        self.frames_total = len(plan.ids)
        self.frames_done = sum(rows.size for p, rows in enumerate(plan.part_rows) if p not in todo)
        self.tokens_todo = sum(
            plan.tokens(kind, plan.part_rows[p]) for p in plan.todo for kind, _ in MODEL_COLUMNS
        )
        self.tokens_done = 0
        self.report()

    def add(self, part: _PartInFlight) -> None:
        self.frames_done += int(part.rows.size)
        self.tokens_done += sum(part.tokens.values())
        self.report()

    def report(self) -> None:
        self.progress.write(
            TaskProgress(self.frames_done, self.frames_total, self.tokens_done, self.tokens_todo)
        )


def _run_parts(
    plan: _Plan, issuer: _PartIssuer, writer: PartWriter, counter: _Counter, stop: threading.Event
) -> None:
    """Issue the parts still to do, keeping `PARTS_AHEAD` on the device, and hand each finished one
    to the writer. A set ``stop`` issues nothing new; parts already issued are finished."""
    import torch

    inflight: deque[_PartInFlight] = deque()

    def collect() -> None:
        part = inflight.popleft()
        writer.submit(part)
        counter.add(part)

    with torch.inference_mode():
        for p in plan.todo:
            if stop.is_set():
                break
            inflight.append(issuer.issue(p))
            while len(inflight) > PARTS_AHEAD:
                collect()
        while inflight:
            collect()
    writer.drain()


def score_shard(
    shard_path: Path | str,
    job: FrameJob,
    out_dir: Path | str,
    *,
    models: FrameModels | None = None,
    stop: threading.Event | None = None,
    progress: ProgressFile | None = None,
) -> ShardResult:
    """Score every frame of a shard into ``out_dir`` (see the module docstring).

    Phases: load (unless ``models`` is given) -> plan (read, tokenize, order, resume) -> run (issue
    parts, write them) -> record (mark complete, return the `ShardResult`).

    Args:
        shard_path: parquet with columns ``id, nucleotide, protein``.
        job: encoders, head, device, part size, resume, keep_embeddings.
        out_dir: the shard's score part directory (empty, or resumable with ``job.resume``).
        models: already loaded `FrameModels` (a resident worker passes its own); None loads them.
        stop: set by a signal handler: finish the parts already issued, write them, raise
            `Interrupted` (also when they were the last ones).
        progress: where to report `TaskProgress` after each part.
    Raises:
        InputError, ConfigError, ResumeMismatchError, NumericalError, Interrupted.
    """
    shard, out = Path(shard_path), Path(out_dir)
    stop = stop or threading.Event()
    timings: dict[str, float] = {}
    if models is None:
        models = load_frame_models(job)
    timings["load_models_s"] = models.load_seconds

    t = time.perf_counter()
    plan = _plan(shard, job, models, out, timings)
    timings["plan_s"] = time.perf_counter() - t
    stats = {
        kind: ModelStats(
            token_budget=plan.budgets[kind], backend=models.encoders[kind].backend, precision=cfg.precision
        )
        for (kind, _), cfg in zip(MODEL_COLUMNS, (job.dnabert, job.esm))
    }
    counter = _Counter(plan, progress or ProgressFile(None))
    log.info(
        "%s: %d frames, %d parts (%d already done), budgets %s, backends %s on %s",
        shard.name,
        len(plan.ids),
        len(plan.part_rows),
        len(plan.part_rows) - len(plan.todo),
        plan.budgets,
        {k: e.backend for k, e in models.encoders.items()},
        models.device,
    )

    timeline = DeviceTimeline.for_device(models.device)
    issuer = _PartIssuer(models, plan, timeline, job.keep_embeddings, stats)
    writer = PartWriter(plan, shard.name)
    started_at = time.time()
    t = time.perf_counter()
    try:
        _run_parts(plan, issuer, writer, counter, stop)
    finally:
        writer.close()
    timings["run_s"] = time.perf_counter() - t
    timings["write_s"] = writer.seconds
    return _record(
        shard,
        out,
        plan,
        models,
        stats,
        timeline.summary(),
        writer,
        timings,
        started_at,
        interrupted=stop.is_set(),
    )


def _record(
    shard: Path,
    out: Path,
    plan: _Plan,
    models: FrameModels,
    stats: dict[str, ModelStats],
    summary: TimelineSummary,
    writer: PartWriter,
    timings: dict[str, float],
    started_at: float,
    *,
    interrupted: bool,
) -> ShardResult:
    """Mark the directories complete when every part is there; the result, or `Interrupted`."""
    for kind in stats:
        stats[kind].device_seconds = summary.seconds_by_label.get(kind)
    if len(writer.written) == len(plan.todo):
        for name, directory in plan.dirs.items():
            write_metadata(directory, {**plan.metadata[name], "complete": True})
    result = ShardResult(
        shard=str(shard),
        out_dir=str(out),
        status="interrupted" if interrupted else "complete",
        frames=len(plan.ids),
        frames_scored=int(sum(plan.part_rows[p].size for p in writer.written)),
        parts=len(plan.part_rows),
        parts_written=len(writer.written),
        parts_skipped=len(plan.part_rows) - len(plan.todo),
        models=stats,
        head_device_seconds=summary.seconds_by_label.get("head"),
        busy_fraction=summary.busy_fraction,
        window_s=summary.window_s,
        started_at=started_at,
        finished_at=time.time(),
        device=str(models.device),
        timings={k: round(v, 4) for k, v in timings.items()},
        embedding_dirs={k: str(v) for k, v in plan.dirs.items() if k != SCORES_KIND},
    )
    if interrupted:
        left = len(plan.todo) - len(writer.written)
        raise Interrupted(
            f"stopped by a signal after writing {len(writer.written)} part(s) of {shard.name} "
            f"({left} left); rerun with --resume to continue"
        )
    return result


def read_scores(dirs: list[Path]) -> tuple[list[str], np.ndarray]:
    """Ids and ``(N, 2) float32`` scores of complete score directories, in part order."""
    from pipeline.embed.parts import open_embeddings

    if not dirs:
        return [], np.empty((0, 2), dtype=np.float32)
    scores = open_embeddings(dirs)
    return [str(i) for i in scores.ids.tolist()], np.asarray(scores.vectors, dtype=np.float32)


__all__ = [
    "MODEL_COLUMNS",
    "FrameJob",
    "FrameModels",
    "HeadFactory",
    "ModelStats",
    "PartWriter",
    "ShardResult",
    "load_frame_models",
    "read_scores",
    "resolve_device",
    "score_shard",
]
