"""Train a classifier whose decision boundary means something, for the label agreement of
``virnucpro validate`` (a random classifier's boundary cuts the data at random, so its flips say
nothing about the embeddings).

Two classes of synthetic reads drawn like `validation.equivalence.synthetic_frames` draws its reads
(0.5-2 chunk lengths, 60-85 % GC), split by GC content: "viral" above ``--gc-split`` (default 0.725),
"other" below. ``virnucpro train`` then embeds them with the given models in fp32 and trains the MLP,
so the boundary follows a real property of the sequences and runs through the middle of the
validation frames' distribution. Use the same models, seed and device type for training and for
``validate``: ``random:`` weights are drawn per device type.

    python scripts/fidelity_classifier.py --out fidelity --gpus 0 \\
        --esm-model random:esm2_t36_3B_UR50D --dnabert-model random:dnabert-s
    virnucpro validate --device cuda --n 2048 --precision fp16,bf16,fp8 \\
        --classifier fidelity/train/classifier.safetensors --json validate_fp8.json

``--demo`` (tiny random models on CPU, seconds) checks the plumbing only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def labelled_reads(
    n_per_class: int, chunk_size: int = 300, seed: int = 1, gc_split: float = 0.725
) -> tuple[list[str], list[str]]:
    """``(viral, other)`` reads: GC drawn uniformly from 60-85 %, class by GC above/below ``gc_split``."""
    rng = np.random.default_rng(seed)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    viral: list[str] = []
    other: list[str] = []
    while len(viral) < n_per_class or len(other) < n_per_class:
        gc = float(rng.uniform(0.60, 0.85))
        length = int(rng.integers(chunk_size // 2, 2 * chunk_size))
        probs = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
        read = bases[rng.choice(4, size=length, p=probs)].tobytes().decode()
        target = viral if gc >= gc_split else other
        if len(target) < n_per_class:
            target.append(read)
    return viral, other


def write_fasta(path: Path, prefix: str, reads: list[str]) -> Path:
    from pipeline.core.atomic import atomic_write_text

    atomic_write_text(path, "".join(f">{prefix}_{i}\n{r}\n" for i, r in enumerate(reads)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (FASTA files, train run)")
    parser.add_argument("--n", type=int, default=600, help="reads per class")
    parser.add_argument("--chunk-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1, help="seed of the reads (validate uses 0)")
    parser.add_argument("--gc-split", type=float, default=0.725)
    parser.add_argument("--esm-model", default=None)
    parser.add_argument("--dnabert-model", default=None)
    parser.add_argument("--gpus", default=None)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--demo", action="store_true", help="tiny random models on CPU (plumbing check)")
    args = parser.parse_args(argv)

    from pipeline.cli import main as cli

    viral, other = labelled_reads(args.n, args.chunk_size, args.seed, args.gc_split)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train = ["train", "--viral", str(write_fasta(out / "viral.fa", "gc_high", viral))]
    train += ["--other", str(write_fasta(out / "other.fa", "gc_low", other))]
    train += ["-o", str(out / "train"), "--chunk-size", str(args.chunk_size), "--epochs", str(args.epochs)]
    train += ["--precision", "fp32"]  # the classifier learns from reference-precision embeddings
    for flag, value in (("--esm-model", args.esm_model), ("--dnabert-model", args.dnabert_model)):
        if value:
            train += [flag, value]
    if args.gpus:
        train += ["--gpus", args.gpus]
    if args.demo:
        train += ["--demo"]
    try:
        cli(train)  # prints where the classifier went
    except SystemExit as exc:  # the console entry point always exits
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
