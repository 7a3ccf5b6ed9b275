"""Attention kernels for packed short sequences on one GPU, alone and inside the ESM-2 3B engine.

Part A (kernels): q, k, v ``(T, 40, 64)`` bf16 - ESM-2 3B's heads - packed from the three length mixes
of `esm2_device.py` (short reads 30-60 aa, 500 bp frames 120-166 aa, wide 30-400 aa) into ~64K-token
batches. Each kernel's time per call (CUDA events, after a warm-up), its useful TFLOP/s
(``4 * sum(L_i^2) * H * Dh``) and its largest difference to ``torch-varlen`` (FA2) and to an fp32
softmax reference on a few sequences:
- ``torch-varlen``: ``varlen_attn`` (FA2 tiles of 128 x 128 rows; the engine's default);
- ``cudnn``: cuDNN's fused attention over ragged offsets (``aten._cudnn_attention_forward`` with
  ``cum_seq_q``, the kernel behind SDPA on nested tensors; measured 40x slower than FA2, not offered);
- ``mem-efficient``: the CUTLASS kernel's varlen entry (`pipeline.models.attention.efficient_varlen`;
  torch-varlen uses it for batches of short sequences);
- ``flex``: FlexAttention with the document mask (`flex_block_mask`), compiled.

Part B (engine): `PackedESM2` bf16, compiled, with each attention backend on the three mixes, its pooled
embeddings compared with the ``torch-varlen`` engine's (cosine min); then, with the fastest backend,
inductor's ``max-autotune-no-cudagraphs`` mode (Triton GEMM templates with fused epilogues) and the FP8
engine (MLP, and every Linear) on the same data.

Usage (GPU):  python benchmarks/gpu/attention_device.py --out attention.json
Usage (CPU):  python benchmarks/gpu/attention_device.py --smoke --out /tmp/attention.json  (sdpa only)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.gpu.common import save  # noqa: E402

SCHEMA = "virnucpro.bench.attention/1"
KERNELS = ("torch-varlen", "cudnn", "mem-efficient", "flex")
ENGINE_BACKENDS = ("torch-varlen", "flex")


def packed_lengths(lo: int, hi: int, budget: int, rng: np.random.Generator) -> list[int]:
    """Token lengths (residues + BOS + EOS) drawn from ``lo..hi`` aa until ``budget`` tokens are full."""
    out: list[int] = []
    while True:
        n = int(rng.integers(lo, hi + 1)) + 2
        if sum(out) + n > budget:
            return out
        out.append(n)


def kernel_fn(name: str, cu, max_seqlen: int, total: int):
    """``f(q, k, v) -> out`` for kernel ``name`` on one packed batch (masks built here, outside timing)."""
    import torch

    from pipeline.models import attention as A

    scale = 64**-0.5
    if name == "torch-varlen":  # FA2 whatever the lengths (the backend itself picks by length)
        return lambda q, k, v: A._torch_varlen()(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale)
    if name == "cudnn":

        def cudnn(q, k, v):
            op = torch.ops.aten._cudnn_attention_forward
            return op(q, k, v, None, cu, cu, max_seqlen, max_seqlen, False, 0.0, False, False, scale=scale)[0]

        return cudnn
    if name == "mem-efficient":
        return lambda q, k, v: A.efficient_varlen(q, k, v, cu, max_seqlen, scale)
    if name == "flex":
        mask = A.flex_block_mask(cu, total)
        return lambda q, k, v: A.flex_varlen(q, k, v, cu, scale, block_mask=mask)
    if name == "sdpa":
        return lambda q, k, v: A.sdpa_varlen(q, k, v, cu, max_seqlen, scale)
    raise ValueError(name)


def fp32_reference(q, k, v, cu: list[int], n_seqs: int):
    """Exact softmax attention in fp32 for the first ``n_seqs`` sequences: ``(T_n, H, Dh)``."""
    import torch

    outs = []
    for a, b in zip(cu[:n_seqs], cu[1 : n_seqs + 1]):
        qs, ks, vs = (x[a:b].float().transpose(0, 1) for x in (q, k, v))
        w = torch.softmax(qs @ ks.transpose(1, 2) * 64**-0.5, dim=-1)
        outs.append((w @ vs).transpose(0, 1))
    return torch.cat(outs)


def kernels_part(result: dict[str, Any], mixes: dict, device, iters: int, log) -> None:
    import torch

    names = KERNELS if device.type == "cuda" else ("sdpa",)
    for mix, lengths in mixes.items():
        total = sum(lengths)
        cu_list = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        cu = torch.tensor(cu_list, dtype=torch.int32, device=device)
        max_seqlen = max(lengths)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(total, 40, 64, device=device, dtype=dtype, generator=gen) for _ in range(3))
        flops = 4 * sum(n * n for n in lengths) * 40 * 64
        ref32 = fp32_reference(q, k, v, cu_list, 8)
        base = None
        for name in names:
            try:
                fn = kernel_fn(name, cu, max_seqlen, total)
                with torch.inference_mode():
                    out = fn(q, k, v)
                    for _ in range(3):
                        fn(q, k, v)
                    if device.type == "cuda":
                        start, end = (
                            torch.cuda.Event(enable_timing=True),
                            torch.cuda.Event(enable_timing=True),
                        )
                        start.record()
                        for _ in range(iters):
                            fn(q, k, v)
                        end.record()
                        torch.cuda.synchronize(device)
                        ms = start.elapsed_time(end) / iters
                    else:
                        t0 = time.perf_counter()
                        for _ in range(iters):
                            fn(q, k, v)
                        ms = (time.perf_counter() - t0) * 1e3 / iters
            except Exception as exc:  # noqa: BLE001 - a kernel this torch lacks is recorded, not fatal
                result["skipped"].append(f"kernel {name} {mix}: {type(exc).__name__}: {str(exc)[:300]}")
                log(f"kernel {name} {mix} FAILED: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if base is None:
                base = out
            row = {
                "mix": mix,
                "kernel": name,
                "tokens": total,
                "sequences": len(lengths),
                "max_seqlen": max_seqlen,
                "ms": ms,
                "useful_tflops": flops / ms / 1e9,
                "max_abs_diff_vs_first": float((out.float() - base.float()).abs().max()),
                "max_abs_diff_vs_fp32": float((out[: ref32.shape[0]].float() - ref32).abs().max()),
            }
            result["kernels"].append(row)
            log(
                f"kernel {mix:<24} {name:<14} {ms:7.3f} ms  {row['useful_tflops']:6.1f} TFLOP/s  "
                f"diff fp32 {row['max_abs_diff_vs_fp32']:.2e}"
            )


def engine_part(result: dict[str, Any], args, log) -> None:
    import torch

    from benchmarks.gpu import esm2_device as E
    from pipeline.models.esm2.model import packed_layer

    ns = argparse.Namespace(
        smoke=args.smoke,
        device=args.device,
        model=None,
        budget=None,
        seed=0,
        max_seconds=args.max_seconds,
        compile_backend="eager" if args.smoke else "inductor",
        out=args.out,
    )
    b = E.Bench(ns)
    b.t_start = args.t_start
    b.result = result
    rows = result["engine"]
    tok = None
    mixes: dict[str, dict[str, Any]] = {}
    base = E.guarded(b, "load bf16", lambda: E.load(b, "bf16" if not args.smoke else "fp32", compile_=True))
    if base is None:
        return
    tok = base.tokenizer
    for mix, (lo, hi) in E.MIXES.items():
        seqs = E.random_proteins(E.lengths_for_tokens(lo, hi, args.mix_tokens, b.rng), b.rng)
        ids = [tok.encode(s) for s in seqs]
        lens = [t.size for t in ids]
        mixes[mix] = {"ids": ids, "lens": lens, "tokens": int(sum(lens))}

    def pooled(m, data):
        n = min(400, len(data["ids"]))
        pk = E.preload_packed(data["ids"][:n], E.pack_plan(data["lens"][:n], b.budget), b.device, False)
        out = torch.empty(n, m.embed_dim, device=b.device)
        with torch.inference_mode():
            for i, cu, mx, idx in pk:
                out[torch.as_tensor(idx, device=b.device)] = m.embed_packed(i, cu, mx)
        return out

    def use(m, backend: str, mode: str | None = None):
        m.backend = backend
        m._layer_fn = torch.compile(packed_layer, mode=mode, backend=ns.compile_backend)
        m.compiled = True

    backends = ENGINE_BACKENDS if not args.smoke else ("sdpa",)
    # a kernel slower than FA2 alone on the 500 bp batch cannot make the engine faster: not worth its compile
    kernel_ms = {r["kernel"]: r["ms"] for r in result["kernels"] if r["mix"].startswith("frames")}
    if "torch-varlen" in kernel_ms:
        backends = tuple(
            k for k in backends if k == "torch-varlen" or kernel_ms.get(k, 1e9) < kernel_ms["torch-varlen"]
        )
    reference = {mix: pooled(base, d) for mix, d in mixes.items()}
    best: tuple[float, str] = (0.0, base.backend)
    for backend in backends:
        for mix, data in mixes.items():

            def go(backend=backend, mix=mix, data=data):
                use(base, backend)
                row = E.throughput(b, base, mix, data, f"packed-bf16 {backend}")
                cos = torch.nn.functional.cosine_similarity(pooled(base, data), reference[mix])
                row["cos_min_vs_torch_varlen"] = float(cos.min())
                rows.append(row)
                save(args.out, result)
                return row

            row = E.guarded(b, f"engine {backend} {mix}", go, need=40)
            if row and mix.startswith("frames") and row["tokens_per_s"] > best[0]:
                best = (row["tokens_per_s"], backend)
    result["best_backend_500bp"] = best[1]
    frames = "frames_500bp_120-166aa"

    if not args.smoke:
        for name, targets in (("fp8", None), ("fp8-all-linear", E.ALL_LINEAR)):

            def fp8(name=name, targets=targets):
                m8 = E.load(b, "fp8", compile_=True, base=base, fp8_targets=targets or E._default_targets())
                use(m8, best[1])
                for mix, data in mixes.items():
                    if name == "fp8" or mix == frames:
                        rows.append(E.throughput(b, m8, mix, data, f"packed-{name} {best[1]}"))
                        save(args.out, result)

            E.guarded(b, name, fp8, need=60)

    def autotune():
        use(base, best[1], mode="max-autotune-no-cudagraphs")
        rows.append(E.throughput(b, base, frames, mixes[frames], f"packed-bf16 {best[1]} max-autotune"))
        save(args.out, result)

    E.guarded(b, "max-autotune", autotune, need=150)


def table(result: dict[str, Any]) -> str:
    lines = [f"{'mix':<24} {'kernel':<14} {'ms':>8} {'TFLOP/s':>8} {'diff fp32':>10}"]
    for r in result["kernels"]:
        lines.append(
            f"{r['mix']:<24} {r['kernel']:<14} {r['ms']:>8.3f} {r['useful_tflops']:>8.1f} "
            f"{r['max_abs_diff_vs_fp32']:>10.2e}"
        )
    lines.append("")
    lines.append(f"{'mix':<24} {'engine':<40} {'tok/s':>10} {'cos_min':>9}")
    for r in result["engine"]:
        lines.append(
            f"{r['mix']:<24} {r['path']:<40} {r['tokens_per_s']:>10,.0f} "
            f"{r.get('cos_min_vs_torch_varlen', 1):>9.6f}"
        )
    for s in result["skipped"]:
        lines.append(f"skipped: {s}")
    lines.append(f"total {result.get('seconds_total', 0):.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--smoke", action="store_true", help="CPU, sdpa and the 8M model: the plumbing only")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=int, default=65536, help="tokens per packed batch (part A)")
    parser.add_argument("--mix-tokens", type=int, default=300_000, help="tokens per mix (part B)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-engine", action="store_true", help="part A only")
    parser.add_argument("--max-seconds", type=float, default=1e9)
    args = parser.parse_args(argv)
    args.t_start = time.perf_counter()

    import torch

    from benchmarks.gpu.esm2_device import MIXES, _machine
    from pipeline.core.runinfo import environment_info

    if args.smoke:
        args.device, args.budget, args.mix_tokens, args.iters = "cpu", 2048, 300, 2
    device = torch.device(args.device)
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": environment_info(),
        "machine": _machine(device),
        "config": {"budget": args.budget, "mix_tokens": args.mix_tokens, "iters": args.iters},
        "kernels": [],
        "engine": [],
        "skipped": [],
    }

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - args.t_start:6.1f}s] {msg}", flush=True)

    rng = np.random.default_rng(0)
    mixes = {mix: packed_lengths(lo, hi, args.budget, rng) for mix, (lo, hi) in MIXES.items()}
    kernels_part(result, mixes, device, args.iters, log)
    save(args.out, result)
    if not args.no_engine:
        engine_part(result, args, log)
    result["seconds_total"] = time.perf_counter() - args.t_start
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
