"""Shard runner vs bare model on one device: end-to-end tokens/s, device idle time, packing.

Usage (one H200, < 4 min):
    python benchmarks/gpu/runner_device.py --out benchmarks/results/runner_device.json
    python benchmarks/gpu/runner_device.py --smoke --out /tmp/runner_smoke.json     # CPU, seconds

What it measures, on the same synthetic shard of short-read frames (~50 aa) in the same process:
- bare: the model alone - `embed_packed` in a loop over batches already packed (same FFD plan and
  token budget as the runner) and already on the device; one sync at the end. Measured on an
  evenly spread subset of the plan's batches so it fits the time limit.
- runner: `pipeline.embed.runner.embed_shard` on the shard parquet with the already loaded model: read,
  tokenize, pack, copy, forward, pool, copy back, check, write parts (atomic, checksummed).
  Reported as tokens / wall seconds of the whole call, and as the embed loop's own tokens/s.
- device idle fraction inside the runner's embed loop (CUDA events around every batch),
  packing efficiency (real tokens / (batches x budget)).
The model is loaded once and warmed up before either measurement.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runs from a plain checkout (no pip install) on the device machine
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.gpu.common import preload_packed, save, synchronize  # noqa: E402
from validation.metrics import cosine_stats  # noqa: E402

AA = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)


def short_read_frames(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` random protein frames of a 150 bp short-read mix: 80 % 49-50 aa, 20 % 15-48 aa."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.8, rng.integers(49, 51, n), rng.integers(15, 49, n))
    residues = AA[rng.integers(0, AA.size, int(lengths.sum()))].tobytes().decode()
    ends = np.cumsum(lengths)
    starts = ends - lengths
    seqs = [residues[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
    ids = [f"read{i // 6}_{'FR'[(i % 6) // 3]}{1 + i % 3}" for i in range(n)]
    return ids, seqs


def short_read_dna_frames(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` random nucleotide frames of a 150 bp short-read mix (what DNABERT-S embeds): 100-151 bp."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(100, 152, n)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, int(lengths.sum()))].tobytes().decode()
    ends = np.cumsum(lengths)
    seqs = [bases[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist())]
    ids = [f"read{i // 6}_{'FR'[(i % 6) // 3]}{1 + i % 3}" for i in range(n)]
    return ids, seqs


def write_shard(path: Path, ids: list[str], seqs: list[str], column: str = "protein") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = "nucleotide" if column == "protein" else "protein"
    pq.write_table(pa.table({"id": ids, column: seqs, other: ["A"] * len(ids)}), path)
    return path


def bare_throughput(encoder, batches, device, seconds: float) -> dict:
    """Tokens/s of `embed_packed` over pre-built device batches, ~``seconds`` long."""
    import torch

    with torch.inference_mode():
        for ids, cu, mx in batches[:2]:  # warm-up (allocator, kernels, compile)
            encoder.embed_packed(ids, cu, mx)
        synchronize(device)
        probe = batches[2:5] or batches[:1]
        t = time.perf_counter()
        for ids, cu, mx in probe:
            encoder.embed_packed(ids, cu, mx)
        synchronize(device)
        per_token = (time.perf_counter() - t) / sum(int(b[0].numel()) for b in probe)
        mean_tokens = sum(int(b[0].numel()) for b in batches) / len(batches)
        n = int(max(3, min(len(batches), seconds / (per_token * mean_tokens))))
        picked = [batches[int(i)] for i in np.linspace(0, len(batches) - 1, n).round().astype(int)]
        tokens = sum(int(b[0].numel()) for b in picked)
        t = time.perf_counter()
        for ids, cu, mx in picked:
            encoder.embed_packed(ids, cu, mx)
        synchronize(device)
        elapsed = time.perf_counter() - t
    check = getattr(encoder, "check_finite", None)
    if check is not None:
        check("bare benchmark batches")
    return {"batches": n, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def spot_check(encoder, out_dir: Path, by_id: dict[str, str], n: int = 256) -> dict:
    """Compare runner rows with the model run directly on the same sequences, one small synchronous
    batch at a time (catches any stream/copy ordering bug in the runner's asynchronous path)."""
    import torch

    from pipeline.embed.parts import open_embeddings
    from pipeline.models.packing import pack

    es = open_embeddings(out_dir)
    rows = np.linspace(0, len(es) - 1, min(n, len(es))).round().astype(int)
    got = es.vectors[rows]
    want = []
    with torch.inference_mode():
        for start in range(0, rows.size, 32):
            toks = [encoder.tokenizer.encode(by_id[i]) for i in es.ids[rows[start : start + 32]]]
            ids, cu, max_seqlen = pack(toks)
            device = next(encoder.parameters()).device
            out = encoder.embed_packed(ids.to(device), cu.to(device), max_seqlen)
            want.append(out.float().cpu().numpy())
    return {"rows_in_output": len(es), **cosine_stats(got, np.concatenate(want))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="JSON results file")
    ap.add_argument("--smoke", action="store_true", help="tiny model and shard on CPU (checks the script)")
    ap.add_argument("--frames", type=int, default=None, help="frames in the synthetic shard (default 200000)")
    ap.add_argument("--kind", default="esm2", choices=("esm2", "dnabert-s"))
    ap.add_argument("--model", default=None, help="default random:esm2_t36_3B_UR50D / random:dnabert-s")
    ap.add_argument("--precision", default=None, help="default fp16 (fp32 with --smoke)")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the layer function (both paths)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--token-budget", type=int, default=None, help="default: the runner's own choice")
    ap.add_argument("--part-size", type=int, default=None, help="default 4096 (32 with --smoke)")
    ap.add_argument("--bare-seconds", type=float, default=None, help="target length of the bare run (25)")
    ap.add_argument(
        "--runner-seconds",
        type=float,
        default=None,
        help="cap on the runner's estimated time; frames are reduced to fit (165)",
    )
    args = ap.parse_args(argv)

    import torch

    from pipeline.core.config import EmbedConfig, EncoderConfig
    from pipeline.core.runinfo import environment_info
    from pipeline.embed.planning import choose_token_budget, plan_batches
    from pipeline.embed.runner import embed_shard
    from pipeline.models.registry import load_encoder

    smoke = args.smoke
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not smoke else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if smoke:
        torch.set_num_threads(1)
    kind = args.kind
    defaults = {
        "esm2": ("random:esm2_t6_8M_UR50D", "random:esm2_t36_3B_UR50D"),
        "dnabert-s": ("random:dnabert-s-tiny", "random:dnabert-s"),
    }
    model = args.model or defaults[kind][0 if smoke else 1]
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    frames = args.frames or (120 if smoke else 200_000)
    part_size = args.part_size or (32 if smoke else 4096)
    bare_seconds = args.bare_seconds or (1.0 if smoke else 25.0)
    runner_cap = args.runner_seconds or (60.0 if smoke else 165.0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    enc_cfg = EncoderConfig(model=model, precision=precision, attention=args.attention, compile=args.compile)
    t = time.perf_counter()
    encoder = load_encoder(kind, enc_cfg, device)
    encoder.eval()
    load_s = time.perf_counter() - t

    ids, seqs = (short_read_frames if kind == "esm2" else short_read_dna_frames)(frames)
    tokenized = encoder.tokenizer.encode_batch(seqs)
    lengths = np.array([x.size for x in tokenized])
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    budget = choose_token_budget(
        device_type=device.type,
        hidden_size=encoder.info.hidden_size,
        dtype_bytes=2 if precision != "fp32" else 4,
        free_bytes=free,
        override=args.token_budget or (512 if smoke else None),
    )
    plan = plan_batches(lengths, budget)
    device_batches = [b[:3] for b in preload_packed(tokenized, plan, device)]
    bare = bare_throughput(encoder, device_batches, device, bare_seconds)
    del device_batches

    # keep the runner inside the time limit: cap the shard by the bare rate (+15 % slack)
    est = lengths.sum() / bare["tokens_per_s"] * 1.15
    capped = est > runner_cap
    if capped:
        frames = int(frames * runner_cap / est)
        ids, seqs = ids[:frames], seqs[:frames]

    work = Path(tempfile.mkdtemp(prefix="runner_device_"))
    try:
        shard = write_shard(
            work / "shard-000.parquet", ids, seqs, "protein" if kind == "esm2" else "nucleotide"
        )
        cfg = EmbedConfig(
            encoder=enc_cfg,
            device=str(device),
            token_budget=budget,
            num_workers=None,
            part_size=part_size,
            resume=False,
            progress=False,
        )
        t = time.perf_counter()
        try:
            record = embed_shard(shard, None, kind, cfg, work / "out", encoder=encoder)
        except Exception as exc:  # keep the bare numbers and say what failed
            save(
                args.out,
                {
                    "benchmark": "runner_device",
                    "environment": environment_info(),
                    "bare": bare,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            raise
        runner_wall = time.perf_counter() - t
        check = spot_check(encoder, work / "out", dict(zip(ids, seqs)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stage = record["stages"][0]
    runner_tps = stage["tokens"] / runner_wall
    results = {
        "benchmark": "runner_device",
        "environment": environment_info(),
        "config": {
            "kind": kind,
            "model": model,
            "precision": precision,
            "attention": args.attention,
            "backend": encoder.backend,
            "compile": args.compile,
            "device": str(device),
            "frames_requested": args.frames or (120 if smoke else 200_000),
            "frames": frames,
            "frames_capped_to_fit_time": capped,
            "token_budget": budget,
            "part_size": part_size,
            "smoke": smoke,
            "embed_config": asdict(cfg),
        },
        "model_load_s": round(load_s, 3),
        "bare": {k: round(v, 4) if isinstance(v, float) else v for k, v in bare.items()},
        "runner": {
            "wall_s": round(runner_wall, 3),
            "tokens": stage["tokens"],
            "sequences": stage["sequences"],
            "tokens_per_s_end_to_end": round(runner_tps, 1),
            "tokens_per_s_embed_loop": stage["tokens_per_s"],
            "device_idle_fraction": stage["device_idle_fraction"],
            "packing_efficiency": stage["packing_efficiency"],
            "batches": stage["batches"],
            "num_workers": stage["num_workers"],
            "timings": stage["timings"],
        },
        "spot_check_vs_direct_forward": check,
        "ratio_end_to_end_vs_bare": round(runner_tps / bare["tokens_per_s"], 4),
        "ratio_embed_loop_vs_bare": round((stage["tokens_per_s"] or 0) / bare["tokens_per_s"], 4),
        "goal": "runner end-to-end >= 90% of bare; packing >= 95%",
        "total_s": round(time.perf_counter() - t0, 2),
    }
    save(args.out, results)

    idle = stage["device_idle_fraction"]
    rows = [
        ("device", f"{results['environment'].get('device_name')} ({device})"),
        ("model / precision / backend", f"{model} / {precision} / {encoder.backend}"),
        (
            "frames / tokens",
            f"{stage['sequences']:,} / {stage['tokens']:,}" + (" (capped)" if capped else ""),
        ),
        ("token budget / batches", f"{budget} / {stage['batches']}"),
        ("packing efficiency", f"{100 * stage['packing_efficiency']:.2f} %"),
        ("bare model tok/s", f"{bare['tokens_per_s']:,.0f} ({bare['batches']} batches)"),
        ("runner end-to-end tok/s", f"{runner_tps:,.0f} ({runner_wall:.1f} s)"),
        ("runner embed-loop tok/s", f"{stage['tokens_per_s'] or 0:,.0f}"),
        ("end-to-end / bare", f"{100 * results['ratio_end_to_end_vs_bare']:.1f} %  (goal >= 90 %)"),
        ("output rows / spot-check min cos", f"{check['rows_in_output']:,} / {check['cos_min']:.6f}"),
        ("device idle in embed loop", "n/a (CPU)" if idle is None else f"{100 * idle:.2f} %"),
        ("total seconds", f"{results['total_s']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nrunner_device results -> {args.out}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
