"""Score every kept frame: join DNABERT-S and ESM-2 embeddings by frame id, run the MLP, softmax.

Embeddings come back from the embedding stage in shard order, not input order, so rows are matched
by id, never by position. A frame id that is missing from either set, appears twice, or an
embedding whose id is not a frame of the prepared directory means the outputs do not belong together:
that fails with `OutputIntegrityError` instead of silently scoring the wrong pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.classify.mlp import MLPClassifier, load_classifier
from pipeline.core.atomic import atomic_path
from pipeline.core.errors import NumericalError, OutputIntegrityError
from pipeline.embed.parts import open_embeddings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SCORES_FILE = "frame_scores.parquet"
_BATCH = 8192
_SHOW = 5


def frame_ids(prepared_dir: str | Path) -> list[str]:
    """Kept frame ids in ``protein.faa`` order, from the ``frames.parquet`` of a finished prepare
    (`PreparedPaths.locate` refuses an unfinished, mixed or changed prepared directory)."""
    from pipeline.prepare.stage import PreparedPaths

    table = PreparedPaths.locate(prepared_dir).read_frames(["id"])
    return [str(x) for x in table.column("id").to_pylist()]


def _index(ids: Sequence[str], what: str) -> pd.Index:
    import pandas as pd

    index = pd.Index(np.asarray(ids, dtype=object))
    if not index.is_unique:
        dup = index[index.duplicated()].unique()
        raise OutputIntegrityError(
            f"{what} embeddings contain {len(dup)} duplicate id(s), e.g. {list(dup[:_SHOW])}; the "
            "embedding directories overlap or a shard was embedded twice - remove the stale output and rerun"
        )
    return index


def join_positions(frames: Sequence[str], ids: Sequence[str], what: str) -> np.ndarray:
    """Row of each frame id in ``ids``: ``(N,) int64``. Fails on duplicate, missing or extra ids."""
    index = _index(ids, what)
    pos = index.get_indexer(np.asarray(frames, dtype=object))
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        raise OutputIntegrityError(
            f"{missing.size} of {len(frames)} frame(s) have no {what} embedding, e.g. "
            f"{[frames[i] for i in missing[:_SHOW]]}; the embedding run is incomplete or belongs to another "
            "input - rerun the embed stage (with --resume) for this prepared directory"
        )
    if len(ids) != len(frames):
        used = np.zeros(len(ids), dtype=bool)
        used[pos] = True
        extra = [ids[i] for i in np.flatnonzero(~used)[:_SHOW]]
        raise OutputIntegrityError(
            f"{what} embeddings hold {len(ids) - len(frames)} id(s) that are not frames of this input, "
            f"e.g. {extra}; they belong to another prepared directory - point at the right embeddings"
        )
    return pos.astype(np.int64)


def score_frames(
    frames: Sequence[str],
    dna_ids: Sequence[str],
    dna_vectors: np.ndarray,
    protein_ids: Sequence[str],
    protein_vectors: np.ndarray,
    model: MLPClassifier,
    *,
    device: str = "cpu",
) -> np.ndarray:
    """Softmax scores per frame, in ``frames`` order.

    Args:
        frames: ``N`` frame ids (the output order).
        dna_ids / dna_vectors: DNABERT-S ids and ``(N, D_dna)`` vectors, any row order.
        protein_ids / protein_vectors: ESM-2 ids and ``(N, D_prot)`` vectors, any row order.
        model: an `MLPClassifier` whose input width is ``D_dna + D_prot``.
        device: where the MLP runs (fp32 everywhere; a GPU helps for millions of frames).
    Returns:
        ``(N, 2) float32``: column 0 = P(others) ("score1"), column 1 = P(virus) ("score2").
    """
    dna_pos = join_positions(frames, dna_ids, "DNABERT-S")
    prot_pos = join_positions(frames, protein_ids, "ESM-2")
    n = len(frames)
    width = dna_vectors.shape[1] + protein_vectors.shape[1] if n else 0
    if n and width != model.input_dim:
        raise OutputIntegrityError(
            f"embeddings are {dna_vectors.shape[1]} (DNA) + {protein_vectors.shape[1]} (protein) = {width} "
            f"wide but the classifier takes {model.input_dim}; use the models the classifier was trained with"
        )
    out = np.empty((n, 2), dtype=np.float32)
    model = model.to(device).float().eval()
    with torch.inference_mode():
        for start in range(0, n, _BATCH):
            stop = min(start + _BATCH, n)
            # DNA first, then protein: the order the original concatenates in.
            x = np.concatenate(
                [
                    np.asarray(dna_vectors[dna_pos[start:stop]], dtype=np.float32),
                    np.asarray(protein_vectors[prot_pos[start:stop]], dtype=np.float32),
                ],
                axis=1,
            )
            logits = model(torch.from_numpy(x).to(device))
            out[start:stop] = torch.softmax(logits.float(), dim=1).cpu().numpy()
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise NumericalError(
            f"{int(bad.sum())} frame(s) got NaN/Inf scores, "
            f"e.g. {[frames[i] for i in np.flatnonzero(bad)[:_SHOW]]}; "
            "the embeddings contain NaN/Inf - rerun embedding in fp32 or bf16 (--precision)"
        )
    return out


def write_scores(frames: Sequence[str], scores: np.ndarray, out_path: str | Path) -> Path:
    """Write ``frame_scores.parquet``: id (string), score_others, score_virus (float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array(list(frames), type=pa.string()),
            "score_others": pa.array(
                scores[:, 0] if len(scores) else np.empty(0, np.float32), type=pa.float32()
            ),
            "score_virus": pa.array(
                scores[:, 1] if len(scores) else np.empty(0, np.float32), type=pa.float32()
            ),
        }
    )
    out = Path(out_path)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def _open(dirs: Sequence[str | Path]):
    return open_embeddings([Path(d) for d in dirs])


def classify(
    prepared_dir: str | Path,
    dnabert_dirs: Sequence[str | Path],
    esm_dirs: Sequence[str | Path],
    classifier: MLPClassifier | str | Path,
    out_path: str | Path,
    *,
    device: str = "cpu",
) -> Path:
    """Score every frame of ``prepared_dir`` and write ``frame_scores.parquet`` in protein.faa order.

    Args:
        prepared_dir: the prepare stage's output (``frames.parquet`` / ``protein.faa``).
        dnabert_dirs / esm_dirs: embedding shard directories of each model (any number, any order).
        classifier: a loaded `MLPClassifier`, or a specifier for `load_classifier`
            (``.pth``, ``.safetensors``, ``random``).
        out_path: where the parquet goes.
        device: torch device for the MLP.
    """
    frames = frame_ids(prepared_dir)
    if not frames:
        log.warning("no frame survived translation; writing empty scores to %s", out_path)
        return write_scores([], np.empty((0, 2), np.float32), out_path)
    dna = _open(dnabert_dirs)
    prot = _open(esm_dirs)
    if isinstance(classifier, (str, Path)):
        width = int(dna.vectors.shape[1]) + int(prot.vectors.shape[1])
        classifier = load_classifier(classifier, width)
    scores = score_frames(
        frames, list(dna.ids), dna.vectors, list(prot.ids), prot.vectors, classifier, device=device
    )
    log.info("scored %d frames", len(frames))
    return write_scores(frames, scores, out_path)


__all__ = ["SCORES_FILE", "classify", "frame_ids", "join_positions", "score_frames", "write_scores"]
