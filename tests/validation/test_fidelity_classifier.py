"""The fidelity classifier's training data: two classes separated by a real sequence property."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fidelity_classifier.py"


def _script():
    spec = importlib.util.spec_from_file_location("fidelity_classifier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gc(read: str) -> float:
    return (read.count("G") + read.count("C")) / len(read)


def test_classes_split_by_gc_within_the_validation_range():
    viral, other = _script().labelled_reads(200, chunk_size=300, seed=3)
    assert len(viral) == len(other) == 200
    high, low = np.array([gc(r) for r in viral]), np.array([gc(r) for r in other])
    # drawn from 60-85 % GC like validate's frames, split at 72.5 %: the boundary runs through them
    assert 0.5 < low.min() and high.max() < 0.95
    assert high.mean() - low.mean() > 0.08
    assert np.mean(high > 0.725) > 0.8 and np.mean(low < 0.725) > 0.8
    assert all(150 <= len(r) < 600 for r in viral + other)
    assert _script().labelled_reads(200, chunk_size=300, seed=3) == (viral, other)  # seeded
