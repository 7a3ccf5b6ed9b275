"""End to end on one machine: prepare -> embed (both models) -> classify -> merge, through
`pipeline.run.predict.run_predict`, with tiny random models on CPU (bigger ones on a GPU, see
``conftest.SIZES``).

Run: ``pytest benchmarks/bench_pipeline.py --benchmark-autosave``. Each round writes into a fresh
output directory; per-stage seconds and tokens/s of the last round go into ``extra_info``.
"""

from __future__ import annotations

import importlib.util
import itertools

import pytest

_MISSING = [
    m
    for m in (
        "pipeline.run.predict",
        "pipeline.prepare.stage",
        "pipeline.embed.runner",
        "pipeline.classify.scoring",
    )
    if importlib.util.find_spec(m) is None
]
pytestmark = [
    pytest.mark.skipif(bool(_MISSING), reason=f"pipeline modules not present yet: {_MISSING}"),
    pytest.mark.benchmark(group="pipeline end-to-end"),  # one group per model and stage
]


def test_pipeline_end_to_end(benchmark, synthetic_fasta, bench_size, gpu, tmp_path):
    import torch

    from pipeline.core.config import EncoderConfig, PredictConfig, Settings
    from pipeline.run.predict import run_predict

    if not gpu:
        torch.set_num_threads(1)
    settings = Settings(progress=False)
    counter = itertools.count()
    records: list[dict] = []

    def setup():
        cfg = PredictConfig(
            input_path=synthetic_fasta,
            output_dir=tmp_path / f"run-{next(counter)}",
            chunk_size=300,
            esm=EncoderConfig(bench_size.esm_model, precision="fp16" if gpu else "fp32"),
            dnabert=EncoderConfig(bench_size.dnabert_model, precision="fp16" if gpu else "fp32"),
            classifier="random",
            gpus=(0,) if gpu else (),
            num_workers=0,
            progress=False,
        )
        return (cfg, settings), {}

    def run(cfg, settings):
        records.append(run_predict(cfg, settings))

    # one warm-up round outside the timing: model construction caches (tokenizers, kernels)
    run(*setup()[0])
    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    record = records[-1]
    stages = {f"{s['stage']}:{s.get('model') or ''}": s for s in record["stages"]}
    benchmark.extra_info.update(
        {
            "size": bench_size.name,
            "reads": bench_size.reads,
            "frames": record.get("counts", {}).get("frames"),
            "stage_seconds": {k: s["seconds"] for k, s in stages.items()},
            "tokens_per_s": {k: s["tokens_per_s"] for k, s in stages.items() if s.get("tokens_per_s")},
        }
    )
    assert (tmp_path / "run-0" / "prediction_results.txt").exists()
    assert record["schema"] == "virnucpro.run/1"
