"""``virnucpro validate --json PATH``: v1-vs-v2 equivalence of embeddings and labels, with thresholds."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.config import ATTENTION_BACKENDS, PRECISIONS
from pipeline.core.errors import ConfigError

# Tiny random architectures on CPU; the full-size architectures on a GPU (pass real checkpoints
# with --esm-model / --dnabert-model to validate trained weights).
_DEFAULTS = {
    "cpu": ("random:esm2_t6_8M_UR50D", "random:dnabert-s-tiny", 48, ("bf16",)),
    "cuda": ("random:esm2_t36_3B_UR50D", "random:dnabert-s", 2048, ("fp16", "bf16")),
}


def _split(values: tuple[str, ...], choices: tuple[str, ...], name: str) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part not in choices:
                raise ConfigError(f"{name} {part!r} is not one of {', '.join(choices)}")
            if part not in out:
                out.append(part)
    return tuple(out)


@click.command("validate")
@click.option(
    "--esm-model",
    default=None,
    help="ESM-2 specifier [default: random:esm2_t6_8M_UR50D on CPU, random:esm2_t36_3B_UR50D on a GPU].",
)
@click.option(
    "--dnabert-model",
    default=None,
    help="DNABERT-S specifier [default: random:dnabert-s-tiny on CPU, random:dnabert-s on a GPU].",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    metavar="P[,P]",
    help="Reduced precision(s) to check against fp32 (fp16, bf16, fp8; repeat or comma-separate) "
    "[default: bf16 on CPU, fp16,bf16 on a GPU, and fp8 where FP8 can run]. fp8 rows use their own "
    "thresholds: mean cosine >= 0.999, every cosine >= 0.995, labels >= 0.999 (docs/validation.md).",
)
@click.option(
    "--attention",
    "attentions",
    multiple=True,
    metavar="B[,B]",
    help=f"Attention backend(s) to check ({', '.join(ATTENTION_BACKENDS)}) [default: auto].",
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=1),
    default=None,
    help="Frames to compare [default: 48 on CPU, 2048 on a GPU].",
)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option(
    "--classifier",
    default="random",
    show_default=True,
    help="Classifier for label agreement (.pth, .safetensors, random or random:<seed>).",
)
@click.option(
    "--chunk-size", default=300, show_default=True, type=int, help="Chunk size of the synthetic reads."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of data and random weights.")
@click.option(
    "--token-budget", default=None, type=int, help="Tokens per packed batch [default: production choice]."
)
@click.option(
    "--json",
    "json_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results here (schema virnucpro.validate/1).",
)
@click.option(
    "--db",
    "db_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also ingest the results into this metrics database.",
)
@click.option(
    "--min-cosine",
    default=0.999,
    show_default=True,
    type=float,
    help="Every sequence's cosine similarity must reach this.",
)
@click.option(
    "--min-label-agreement",
    default=0.999,
    show_default=True,
    type=float,
    help="Frame and chunk label agreement must reach this fraction.",
)
@click.option(
    "--max-rel-l2", default=None, type=float, help="Optional bound on the per-sequence relative L2 error."
)
def command(
    esm_model: str | None,
    dnabert_model: str | None,
    precisions: tuple[str, ...],
    attentions: tuple[str, ...],
    n: int | None,
    device: str,
    classifier: str,
    chunk_size: int,
    seed: int,
    token_budget: int | None,
    json_path: Path,
    db_path: Path | None,
    min_cosine: float,
    min_label_agreement: float,
    max_rel_l2: float | None,
) -> None:
    """Compare the optimized embedding path (packed, fp16/bf16/fp8) with the reference path (padded fp32)
    on synthetic frames, for both models; print a table, write JSON, and exit non-zero (code 9)
    when a threshold fails."""
    from validation.equivalence import EquivalenceConfig, Thresholds, enforce, format_table, run_validation

    thresholds = Thresholds(min_cosine, min_label_agreement, max_rel_l2)  # validated before any model loads
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from pipeline.models.fp8 import check_fp8, fp8_unavailable_reason

    default_esm, default_dna, default_n, default_prec = _DEFAULTS[
        "cuda" if device.startswith("cuda") else "cpu"
    ]
    if device.startswith("cuda") and fp8_unavailable_reason(device) is None:
        default_prec = (*default_prec, "fp8")
    chosen = _split(precisions, PRECISIONS, "--precision") or default_prec
    if "fp8" in chosen:
        check_fp8(device)  # before the fp32 references take their minutes
    config = EquivalenceConfig(
        esm_model=esm_model or default_esm,
        dnabert_model=dnabert_model or default_dna,
        precisions=chosen,
        attentions=_split(attentions, ATTENTION_BACKENDS, "--attention") or ("auto",),
        n=n or default_n,
        device=device,
        classifier=classifier,
        chunk_size=chunk_size,
        seed=seed,
        token_budget=token_budget,
        thresholds=thresholds,
    )
    doc = run_validation(config, json_path, db_path, enforce_thresholds=False)
    click.echo(format_table(doc["results"]))
    click.echo(
        f"wrote {json_path} ({'PASS' if doc['passed'] else 'FAIL'})"
        + (f"; ingested into {db_path} as run {doc['run_id']}" if db_path is not None else "")
    )
    enforce(doc["results"], thresholds)
