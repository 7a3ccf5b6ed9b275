"""Run configuration: frozen dataclasses built once at an entry point (CLI command, DAG task).

This is the only module that reads ``VIRNUCPRO_*`` environment variables (`Settings.from_env`).
Everything below an entry point receives a config object instead of looking at ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.core.errors import ConfigError

PRECISIONS = ("fp16", "bf16", "fp32", "fp8")
#: ``--precision`` default on GPUs: bf16 measured 4.8 % faster than fp16 for ESM-2 3B at cosine >= 0.99997
#: to fp32 (docs/esm2.md); fp8 is opt-in.
DEFAULT_GPU_PRECISION = "bf16"
ATTENTION_BACKENDS = ("auto", "flash-attn", "torch-varlen", "flex", "sdpa", "reference")
DEFAULT_ESM_MODEL = "esm2_t36_3B_UR50D"
DEFAULT_DNABERT_MODEL = "zhihan1996/DNABERT-S"
DEFAULT_CHUNK_SIZE = 500


@dataclass(frozen=True)
class ModelKind:
    """One embedding model kind: its registry name, the shard column it embeds, a display label."""

    name: str
    column: str
    label: str


#: The model-kind registry (the one list of kinds; everything else looks kinds up here). The order is
#: the classifier's feature order: DNABERT-S first, then ESM-2, as the original concatenates them.
MODEL_KINDS: tuple[ModelKind, ...] = (
    ModelKind("dnabert-s", "nucleotide", "DNABERT-S"),
    ModelKind("esm2", "protein", "ESM-2"),
)
#: Model kind -> the shard column it embeds.
KIND_COLUMN = {k.name: k.column for k in MODEL_KINDS}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _env_int(environ: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{name}={raw!r} must be an absolute directory path")
    return path


@dataclass(frozen=True)
class Settings:
    """Process-wide settings from the environment (documented in the README, "Environment variables").

    Attributes:
        disable_compile: ``VIRNUCPRO_DISABLE_COMPILE`` - turn ``torch.compile`` off everywhere,
            even when ``--compile`` is given.
        metrics_db: ``VIRNUCPRO_METRICS_DB`` - DuckDB metrics store (default ``reports/metrics.duckdb``).
        log_level: ``VIRNUCPRO_LOG_LEVEL`` - logging level name (default ``INFO``).
        num_workers: ``VIRNUCPRO_NUM_WORKERS`` - DataLoader CPU workers per embedding process
            (default: chosen by the runner from the CPU count).
        token_budget: ``VIRNUCPRO_TOKEN_BUDGET`` - tokens per packed batch (default: chosen from
            model size and free device memory).
        progress: ``VIRNUCPRO_PROGRESS`` - show progress (default on).
        compile_cache_dir: ``VIRNUCPRO_COMPILE_CACHE`` - on-disk cache of compiled kernels
            (TorchInductor and Triton), shared by the workers of a run and by later runs (default
            ``$XDG_CACHE_HOME/virnucpro/compile``, else ``~/.cache/virnucpro/compile``).
        input_root: ``VIRNUCPRO_INPUT_ROOT`` - a DAG's ``input_path`` must lie below it (default:
            the worker's working directory).
        output_root: ``VIRNUCPRO_OUTPUT_ROOT`` - a DAG's ``output_dir`` must lie below it (default:
            the DAG's own default output root).
        metrics_root: ``VIRNUCPRO_METRICS_ROOT`` - a DAG's ``metrics_db`` must lie below it (default:
            the directory of ``metrics_db``).
        gpu_pool_size: ``VIRNUCPRO_GPU_POOL_SIZE`` - slots of the Airflow ``gpu`` pool, the most
            ``gpu_slots`` a DAG run may ask for (default 8).
    """

    disable_compile: bool = False
    metrics_db: Path = Path("reports/metrics.duckdb")
    log_level: str = "INFO"
    num_workers: int | None = None
    token_budget: int | None = None
    progress: bool = True
    compile_cache_dir: Path | None = None
    input_root: Path | None = None
    output_root: Path | None = None
    metrics_root: Path | None = None
    gpu_pool_size: int = 8

    def compile_wanted(self, requested: bool) -> bool:
        """Whether ``torch.compile`` is used for a config asking ``requested``: the one place where
        ``VIRNUCPRO_DISABLE_COMPILE`` overrides ``--compile`` (entry points call it as they build
        their configs)."""
        return requested and not self.disable_compile

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        log_level = env.get("VIRNUCPRO_LOG_LEVEL", "INFO").strip().upper() or "INFO"
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(
                f"VIRNUCPRO_LOG_LEVEL={log_level!r} is not a logging level; "
                "use DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        return cls(
            disable_compile=_env_bool(env, "VIRNUCPRO_DISABLE_COMPILE", False),
            metrics_db=Path(env.get("VIRNUCPRO_METRICS_DB") or "reports/metrics.duckdb"),
            log_level=log_level,
            num_workers=_env_int(env, "VIRNUCPRO_NUM_WORKERS", None, minimum=0),
            token_budget=_env_int(env, "VIRNUCPRO_TOKEN_BUDGET", None, minimum=16),
            progress=_env_bool(env, "VIRNUCPRO_PROGRESS", True),
            compile_cache_dir=_compile_cache_dir(env),
            input_root=_env_path(env, "VIRNUCPRO_INPUT_ROOT"),
            output_root=_env_path(env, "VIRNUCPRO_OUTPUT_ROOT"),
            metrics_root=_env_path(env, "VIRNUCPRO_METRICS_ROOT"),
            gpu_pool_size=_env_int(env, "VIRNUCPRO_GPU_POOL_SIZE", 8, minimum=0),
        )

    def dag_input_root(self) -> Path:
        """Where a DAG run may read its input from (``VIRNUCPRO_INPUT_ROOT``, else the working directory)."""
        return self.input_root or Path.cwd()

    def dag_metrics_root(self) -> Path:
        """Where a DAG run's ``metrics_db`` may lie (``VIRNUCPRO_METRICS_ROOT``, else beside metrics_db)."""
        return self.metrics_root or self.metrics_db.expanduser().absolute().parent


def _compile_cache_dir(env: Mapping[str, str]) -> Path:
    raw = (env.get("VIRNUCPRO_COMPILE_CACHE") or "").strip()
    if raw:
        return Path(raw).expanduser()
    base = (env.get("XDG_CACHE_HOME") or "").strip()
    return (
        (Path(base) if base else Path(env.get("HOME") or "~").expanduser() / ".cache")
        / "virnucpro"
        / "compile"
    )


def column_for_kind(kind: str) -> str:
    """``"esm2"`` -> ``"protein"``, ``"dnabert-s"`` -> ``"nucleotide"``; ConfigError otherwise."""
    try:
        return KIND_COLUMN[kind]
    except KeyError:
        raise ConfigError(f"model kind {kind!r} is not one of {', '.join(KIND_COLUMN)}") from None


def encoder_precision(kind: str, precision: str) -> str:
    """The precision model ``kind`` runs under a run's ``--precision``: ``fp8`` quantizes ESM-2's MLP
    only, so DNABERT-S runs it in bf16 (and its outputs say so)."""
    return "bf16" if precision == "fp8" and kind == "dnabert-s" else precision


def validate_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class EncoderConfig:
    """How to build and run one embedding model (ESM-2 or DNABERT-S).

    Attributes:
        model: model specifier (fair-esm name, local path, HF id/dir, or ``random:<name>``).
        precision: ``fp16`` | ``bf16`` | ``fp32`` | ``fp8`` (ESM-2's MLP in FP8, the rest bf16; Ada/Hopper
            GPUs with the ``fp8`` extra installed).
        attention: attention backend name, or ``auto``.
        compile: wrap the layer function in ``torch.compile`` (ignored when
            ``Settings.disable_compile`` is set).
        seed: seed for ``random:`` weights.
    """

    model: str
    precision: str = "fp32"
    attention: str = "auto"
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise ConfigError("model specifier is empty; give a model name, a path or random:<name>")
        validate_choice("precision", self.precision, PRECISIONS)
        validate_choice("attention", self.attention, ATTENTION_BACKENDS)


@dataclass(frozen=True)
class EmbedConfig:
    """One embedding job over one shard on one device.

    Attributes:
        encoder: which model and numerics.
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``).
        token_budget: tokens per packed batch; ``None`` = choose from model size and free memory.
        num_workers: DataLoader CPU workers; ``None`` = choose from the CPU count.
        part_size: sequences per output part (the unit of atomic writes and of resume).
        resume: continue an interrupted shard instead of refusing a non-empty output directory.
        progress: show a progress bar.
    """

    encoder: EncoderConfig
    device: str = "cpu"
    token_budget: int | None = None
    num_workers: int | None = None
    part_size: int = 4096
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.token_budget is not None and self.token_budget < 16:
            raise ConfigError(f"token_budget={self.token_budget} is too small; use at least 16 tokens")
        if self.part_size < 1:
            raise ConfigError(f"part_size={self.part_size} must be >= 1")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 0")


@dataclass(frozen=True)
class PredictConfig:
    """A whole ``virnucpro predict`` run: prepare -> embed (both models) -> classify -> merge.

    Attributes:
        input_path: FASTA (plain or gzip).
        output_dir: where every output goes.
        chunk_size: chunk length in bp (300 or 500 for the published classifiers).
        esm: ESM-2 encoder config.
        dnabert: DNABERT-S encoder config.
        classifier: VirNucPro ``.pth``, a project ``.safetensors`` file, or ``random``.
        gpus: physical GPU indices, one worker process each; empty = run on CPU.
        token_budget / num_workers: forwarded to every `EmbedConfig`.
        resume: continue an interrupted run.
        demo: tiny random models and classifier (not biologically meaningful).
        keep_embeddings: also write both models' pooled embeddings (``OUT/embeddings/<kind>/``);
            off by default: the classifier runs on the GPU right after the embeddings.
        part_size: frames per output part (the unit of writes and of ``--resume``).
    """

    input_path: Path
    output_dir: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    esm: EncoderConfig = field(default_factory=lambda: EncoderConfig(DEFAULT_ESM_MODEL))
    dnabert: EncoderConfig = field(default_factory=lambda: EncoderConfig(DEFAULT_DNABERT_MODEL))
    classifier: str = "random"
    gpus: tuple[int, ...] = ()
    token_budget: int | None = None
    num_workers: int | None = None
    resume: bool = False
    demo: bool = False
    progress: bool = True
    keep_embeddings: bool = False
    part_size: int = 4096

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ConfigError(f"part_size={self.part_size} must be >= 1")
        if self.chunk_size < 3:
            raise ConfigError(f"chunk_size={self.chunk_size} must be >= 3 (one codon)")
        if len(set(self.gpus)) != len(self.gpus):
            raise ConfigError(f"gpus={list(self.gpus)} lists a GPU twice")
        if any(g < 0 for g in self.gpus):
            raise ConfigError(f"gpus={list(self.gpus)} contains a negative index")

    def embed_config(self, encoder: EncoderConfig, device: str) -> EmbedConfig:
        return EmbedConfig(
            encoder=encoder,
            device=device,
            token_budget=self.token_budget,
            num_workers=self.num_workers,
            part_size=self.part_size,
            resume=self.resume,
            progress=self.progress,
        )


def parse_gpus(text: str | None) -> tuple[int, ...]:
    """``"2,3"`` -> ``(2, 3)``; ``None``/``""``/``"cpu"`` -> ``()`` (CPU)."""
    if text is None or text.strip().lower() in {"", "cpu", "none"}:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--gpus {text!r} is not a comma-separated list of GPU indices, e.g. 0,1") from None


def is_random_classifier(spec: str | Path) -> bool:
    """True for the classifier specs ``random`` and ``random:<seed>`` (random weights, no file)."""
    text = str(spec)
    return text == "random" or text.startswith("random:")


__all__ = [
    "ATTENTION_BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DNABERT_MODEL",
    "DEFAULT_ESM_MODEL",
    "PRECISIONS",
    "DEFAULT_GPU_PRECISION",
    "KIND_COLUMN",
    "MODEL_KINDS",
    "ModelKind",
    "EmbedConfig",
    "EncoderConfig",
    "PredictConfig",
    "Settings",
    "column_for_kind",
    "encoder_precision",
    "is_random_classifier",
    "parse_gpus",
    "replace",
    "validate_choice",
]
