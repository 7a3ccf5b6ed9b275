"""ESM-2 on one device: packed fp16/bf16 equivalence against fair-esm's padded fp32 forward, and
throughput of packed (eager and compiled) against vanilla fair-esm padded fp16, same data, same run.

Part A (equivalence): >= 2,000 random proteins of mixed lengths (mostly 30-166 aa, some up to 1022).
The reference is fair-esm's own ``ESM2.forward`` in fp32 (TF32 off) on length-sorted padded batches;
the packed path runs the same seeded weights cast to fp16 and to bf16. Per-sequence cosine of the
pooled embeddings: min, 0.1th percentile, mean. Goals: min >= 0.9999 (fp16), >= 0.999 (bf16).

Part B (throughput, fp16; fp32 in --smoke): two mixes, short reads (30-60 aa) and 500 bp frames (120-166 aa).
- vanilla: fair-esm's ``ESM2.forward`` in fp16 on length-sorted padded batches (fair-esm's own
  ``toks_per_batch`` rule: batch size x longest length <= budget), residue mean in one masked sum;
- packed eager / packed compiled: `PackedESM2` with the best available attention backend,
  token-budget packed batches (`pipeline.embed.planning.plan_batches`, first-fit decreasing), `embed_packed`.
Tokens/s counts real tokens (residues + BOS + EOS). Each path runs one warm-up pass over a few
batches, then one timed pass over all of them (inputs already on the device).
Goals on one H200 with ESM-2 3B: >= 100K tokens/s and >= 2.5x vanilla.

Usage (GPU):  python benchmarks/gpu/esm2_device.py --out esm2.json
Usage (CPU):  python benchmarks/gpu/esm2_device.py --smoke --out /tmp/esm2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.gpu.common import padded_plan, preload_packed, save, synchronize, timed  # noqa: E402
from validation.metrics import cosine_stats  # noqa: E402

SCHEMA = "virnucpro.bench.esm2/1"
AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)

GPU = {
    "model": "random:esm2_t36_3B_UR50D",
    "n_cos": 2000,
    "ref_budget": 16384,
    "budget": 32768,
    "short_tokens": 600_000,
    "frame_tokens": 600_000,
    "warmup_batches": 4,
    "max_len": 1022,
}
SMOKE = {
    "model": "random:esm2_t6_8M_UR50D",
    "n_cos": 8,
    "ref_budget": 512,
    "budget": 512,
    "short_tokens": 300,
    "frame_tokens": 300,
    "warmup_batches": 1,
    "max_len": 120,
}


def random_proteins(lengths: np.ndarray, rng: np.random.Generator) -> list[str]:
    return [AMINO_ACIDS[rng.integers(0, 20, int(n))].tobytes().decode() for n in lengths]


def mixed_lengths(n: int, rng: np.random.Generator, max_len: int = 1022) -> np.ndarray:
    """40% short reads (30-60 aa), 40% 500 bp frames (120-166), 15% 167-400, 5% 401-1022,
    plus the extremes (1 and 1022); clipped to ``max_len``."""
    parts = [
        rng.integers(30, 61, int(n * 0.40)),
        rng.integers(120, 167, int(n * 0.40)),
        rng.integers(167, 401, int(n * 0.15)),
    ]
    rest = n - sum(len(p) for p in parts) - 2
    parts += [rng.integers(401, 1023, max(rest, 0)), np.array([1, 1022])]
    out = np.concatenate(parts)[-n:]  # keep the extremes when n is tiny
    rng.shuffle(out)
    return np.minimum(out, max_len)


def lengths_for_tokens(lo: int, hi: int, tokens: int, rng: np.random.Generator) -> np.ndarray:
    mean = (lo + hi) / 2 + 2
    return rng.integers(lo, hi + 1, max(int(tokens / mean), 8))


def pack_plan(lengths: list[int], budget: int) -> list[list[int]]:
    """The production packer: first-fit decreasing into batches of <= ``budget`` tokens."""
    from pipeline.embed.planning import plan_batches

    return plan_batches(np.asarray(lengths), budget)


def padded_batches(token_ids: list[np.ndarray], plan: list[list[int]], pad: int, device) -> list[tuple]:
    import torch

    out = []
    for idx in plan:
        longest = max(token_ids[i].size for i in idx)
        toks = torch.full((len(idx), longest), pad, dtype=torch.int64)
        for r, i in enumerate(idx):
            toks[r, : token_ids[i].size] = torch.from_numpy(token_ids[i])
        out.append((toks.to(device), idx))
    return out


def padded_pool(rep, tokens, special: tuple[int, int, int]):
    """Mean over residue positions of a padded batch (BOS, EOS and padding excluded)."""
    import torch

    keep = (tokens != special[0]) & (tokens != special[1]) & (tokens != special[2])
    w = keep.to(torch.float32).unsqueeze(-1)
    return (rep.float() * w).sum(1) / keep.sum(1, keepdim=True).clamp(min=1).float()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipeline.core.config import EncoderConfig
    from pipeline.core.runinfo import environment_info
    from pipeline.models.esm2 import load_esm2

    sizes = SMOKE if args.smoke else GPU
    device = torch.device("cpu" if args.smoke else args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must stay true fp32
    torch.backends.cudnn.allow_tf32 = False
    if args.smoke:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model_spec = args.model or sizes["model"]
    rng = np.random.default_rng(args.seed)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": environment_info(),
        "config": {"model": model_spec, "device": str(device), "seed": args.seed, **sizes},
    }
    t_start = time.perf_counter()

    def load(precision: str, compile_: bool = False):
        t0 = time.perf_counter()
        m = load_esm2(
            EncoderConfig(model_spec, precision=precision, attention="auto", seed=args.seed), device
        )
        if compile_:
            m.enable_compile(args.compile_backend)
        print(
            f"[{time.perf_counter() - t_start:6.1f}s] loaded {model_spec} {precision} backend={m.backend} "
            f"in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        return m

    # ---- part A: equivalence ------------------------------------------------------------------
    n_cos = args.n_cos or sizes["n_cos"]
    cos_seqs = random_proteins(mixed_lengths(n_cos, rng, sizes["max_len"]), rng)
    ref_model = load("fp32")
    tok = ref_model.tokenizer
    cos_ids = [tok.encode(s) for s in cos_seqs]
    lens = [t.size for t in cos_ids]
    special = (tok.cls_idx, tok.eos_idx, tok.pad_id)
    ref = torch.empty(n_cos, ref_model.embed_dim, dtype=torch.float32, device=device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for toks, idx in padded_batches(cos_ids, padded_plan(lens, sizes["ref_budget"]), tok.pad_id, device):
            rep = ref_model.esm(toks, repr_layers=[ref_model.num_layers])["representations"][
                ref_model.num_layers
            ]
            ref[torch.as_tensor(idx, device=device)] = padded_pool(rep, toks, special)
        synchronize(device)
    print(
        f"[{time.perf_counter() - t_start:6.1f}s] fp32 reference for {n_cos} sequences in "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    del ref_model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    equivalence = {}
    cos_plan = pack_plan(lens, sizes["budget"])
    for precision in ("fp16", "bf16"):
        m = load(precision)
        out = torch.empty_like(ref)
        with torch.inference_mode():
            for ids, cu, maxlen, idx in preload_packed(cos_ids, cos_plan, device, cu_on_device=False):
                out[torch.as_tensor(idx, device=device)] = m.embed_packed(ids, cu, maxlen)
        m.check_finite(f"equivalence {precision}")
        stats = cosine_stats(out, ref)
        stats["backend"] = m.backend
        stats["goal_cos_min"] = 0.9999 if precision == "fp16" else 0.999
        stats["pass"] = stats["cos_min"] >= stats["goal_cos_min"]
        equivalence[precision] = stats
        print(f"[{time.perf_counter() - t_start:6.1f}s] {precision} vs fp32: {json.dumps(stats)}", flush=True)
        del m, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["equivalence"] = equivalence
    save(args.out, result)  # partial results survive a later failure or timeout

    # ---- part B: throughput ---------------------------------------------------------------------
    precision = args.bench_precision
    model = load(precision)
    vanilla = model.esm  # fair-esm's ESM2 cast to the precision: what `model.half()` users run
    mixes = {
        "short_reads_30-60aa": (30, 60, sizes["short_tokens"]),
        "frames_500bp_120-166aa": (120, 166, sizes["frame_tokens"]),
    }
    budget = args.budget or sizes["budget"]
    throughput = []
    for mix, (lo, hi, tokens) in mixes.items():
        seqs = random_proteins(lengths_for_tokens(lo, hi, tokens, rng), rng)
        ids = [tok.encode(s) for s in seqs]
        lens = [t.size for t in ids]
        real_tokens = int(sum(lens))
        pk = preload_packed(ids, pack_plan(lens, budget), device, cu_on_device=False)
        pd = padded_batches(ids, padded_plan(lens, budget), tok.pad_id, device)
        packing_eff = real_tokens / (len(pk) * budget)
        padded_eff = real_tokens / sum(t.numel() for t, _ in pd)
        warm = sizes["warmup_batches"]

        def run_vanilla(batches=pd):
            for toks, _ in batches:
                rep = vanilla(toks, repr_layers=[model.num_layers])["representations"][model.num_layers]
                padded_pool(rep, toks, special)

        def run_packed(batches=pk):
            for i, cu, maxlen, _ in batches:
                model.embed_packed(i, cu, maxlen)

        rows = []
        with torch.inference_mode():
            for path in ("vanilla", "packed-eager", "packed-compiled"):
                if path == "packed-compiled":
                    model.enable_compile(args.compile_backend)
                elif path == "packed-eager":
                    model.disable_compile()
                fn = run_vanilla if path == "vanilla" else run_packed
                warm_batches = (pd if path == "vanilla" else pk)[:warm]
                warm_s = timed(lambda fn=fn, warm_batches=warm_batches: fn(warm_batches), device)
                seconds = timed(fn, device)
                row = {
                    "mix": mix,
                    "path": path,
                    "backend": "fair-esm" if path == "vanilla" else model.backend,
                    "precision": precision,
                    "sequences": len(seqs),
                    "tokens": real_tokens,
                    "batches": len(pd) if path == "vanilla" else len(pk),
                    "seconds": seconds,
                    "tokens_per_s": real_tokens / seconds,
                    "warmup_seconds": warm_s,
                    "token_budget": budget,
                    "efficiency": padded_eff if path == "vanilla" else packing_eff,
                }
                if path == "packed-compiled":
                    row["compile_stats"] = model.compile_stats()
                rows.append(row)
                print(
                    f"[{time.perf_counter() - t_start:6.1f}s] {mix} {path}: {row['tokens_per_s']:,.0f} tok/s "
                    f"({seconds:.2f}s, warm-up {warm_s:.1f}s)",
                    flush=True,
                )
        model.check_finite(f"throughput {mix}")
        base = rows[0]["tokens_per_s"]
        for row in rows:
            row["speedup_vs_vanilla"] = row["tokens_per_s"] / base
        throughput.extend(rows)
        result["throughput"] = throughput
        save(args.out, result)
    result["throughput"] = throughput
    best = {}
    for row in throughput:
        if row["path"] != "vanilla":
            cur = best.get(row["mix"])
            if cur is None or row["tokens_per_s"] > cur["tokens_per_s"]:
                best[row["mix"]] = row
    result["goals"] = {
        "fp16_cos_min>=0.9999": equivalence["fp16"]["pass"],
        "bf16_cos_min>=0.999": equivalence["bf16"]["pass"],
        **{f"{mix}: >=100K tok/s": r["tokens_per_s"] >= 100_000 for mix, r in best.items()},
        **{f"{mix}: >=2.5x vanilla": r["speedup_vs_vanilla"] >= 2.5 for mix, r in best.items()},
    }
    result["seconds_total"] = time.perf_counter() - t_start
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "precision  backend       cos_min     cos_p001    cos_mean",
    ]
    for p, s in result["equivalence"].items():
        lines.append(
            f"{p:<10} {s['backend']:<13} {s['cos_min']:.7f}  {s['cos_p001']:.7f}  {s['cos_mean']:.7f}"
        )
    lines.append("")
    lines.append(f"{'mix':<24} {'path':<16} {'backend':<13} {'tok/s':>12} {'x vanilla':>9} {'eff':>6}")
    for r in result["throughput"]:
        lines.append(
            f"{r['mix']:<24} {r['path']:<16} {r['backend']:<13} {r['tokens_per_s']:>12,.0f} "
            f"{r['speedup_vs_vanilla']:>9.2f} {r['efficiency']:>6.3f}"
        )
    lines.append("")
    lines.append("goals: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in result["goals"].items()))
    lines.append(f"total {result['seconds_total']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", default=None, help="ESM-2 specifier (default random:esm2_t36_3B_UR50D)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-cos", type=int, default=None, help="sequences in the equivalence part")
    parser.add_argument("--budget", type=int, default=None, help="tokens per packed / padded batch")
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default inductor; 'eager' in --smoke)"
    )
    parser.add_argument(
        "--bench-precision",
        default=None,
        choices=("fp16", "bf16", "fp32"),
        help="precision of the throughput part (default fp16; fp32 in --smoke, where CPU "
        "half precision is emulated and slow)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.bench_precision is None:
        args.bench_precision = "fp32" if args.smoke else "fp16"
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.smoke else "inductor"
    result = run(args)
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
