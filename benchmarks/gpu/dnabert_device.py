"""DNABERT-S on one device: packed fp16/bf16 equivalence against the padded fp32 reference, and
throughput of the packed path against a padded fp16 baseline, same weights, same data, same run.

Part A (equivalence): >= 2,000 random DNA sequences of 150-500 bp. The reference is
`PackedDNABERTS.embed_reference`: padded fp32 batches through the remote code's pure-PyTorch math
(ALiBi + padding bias, TF32 off). The packed path runs the same seeded weights cast to fp16 and
bf16 (and fp32 as a control) with the best available attention backend. Per-sequence cosine of the
pooled (mean over all tokens) embeddings: min, 0.1th percentile, mean.
Goals: min >= 0.9999 (fp16), >= 0.999 (bf16).

Part B (throughput, fp16, random DNA 150-500 bp):
- padded: the reference-style padded forward in fp16 on length-sorted batches
  (batch size x longest length <= budget), masked mean;
- packed eager / packed compiled: `embed_packed` on FFD token-budget batches
  (`pipeline.embed.planning.plan_batches`).
Tokens/s counts real tokens ([CLS] and [SEP] included). One warm-up pass over a few batches, then
one timed pass over all batches (inputs already on the device). Goal on one H200 with the real
DNABERT-S architecture (``random:dnabert-s``): >= 1M tokens/s packed.

Usage (GPU):  python benchmarks/gpu/dnabert_device.py --out dnabert.json [--no-compile]
Usage (CPU):  python benchmarks/gpu/dnabert_device.py --smoke --out /tmp/dnabert.json

JSON (``--out``): ``{"schema": "virnucpro.bench.dnabert/1", "environment": environment_info(),
"config": {...}, "equivalence": {precision: {backend, n, cos_min, cos_p001, cos_mean, rel_l2_max,
...}}, "throughput": [{path, precision, backend, tokens, sequences, batches, seconds, tokens_per_s,
speedup_vs_padded, efficiency, warmup_s}], "goals": {...}, "seconds_total": ...}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.gpu.common import padded_plan, preload_packed, save, synchronize, timed  # noqa: E402
from validation.metrics import cosine_stats  # noqa: E402

SCHEMA = "virnucpro.bench.dnabert/1"
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)

GPU = {
    "model": "random:dnabert-s",
    "n_cos": 2000,
    "ref_batch": 256,
    "budget": 32768,
    "tokens": 4_000_000,
    "warmup_batches": 4,
    "compile": True,
}
SMOKE = {
    "model": "random:dnabert-s-tiny",
    "n_cos": 24,
    "ref_batch": 8,
    "budget": 1024,
    "tokens": 4000,
    "warmup_batches": 1,
    "compile": False,
}
# Part B's compiled run is skipped when the script has already used this much time (3 min budget).
COMPILE_DEADLINE_S = 110.0


def random_dna(lengths: np.ndarray, rng: np.random.Generator) -> list[str]:
    return [BASES[rng.integers(0, 4, int(n))].tobytes().decode("ascii") for n in lengths]


def to_padded(token_ids: list[np.ndarray], plan: list[list[int]], pad_id: int, device) -> list[tuple]:
    from pipeline.models.dnabert_s.model import pad_batch

    return [(*pad_batch([token_ids[i] for i in idx], pad_id, device), idx) for idx in plan]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipeline.core.config import EncoderConfig
    from pipeline.core.runinfo import environment_info
    from pipeline.embed.planning import packing_efficiency, plan_batches
    from pipeline.models.dnabert_s import load_dnabert_s
    from pipeline.models.dnabert_s.model import masked_mean, padded_reference_forward

    t_start = time.perf_counter()
    preset = dict(SMOKE if args.smoke else GPU)
    for key in ("model", "n_cos", "budget", "tokens"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.no_compile:
        preset["compile"] = False
    if args.compile:
        preset["compile"] = True
    device = torch.device("cpu" if args.smoke else args.device)
    if device.type == "cuda":
        if device.index is None:  # set_device and mem_get_info want an explicit index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    # the fp32 reference must be real fp32 (no TF32 matmuls)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(args.seed)

    def load(precision: str, compile_: bool = False):
        cfg = EncoderConfig(
            preset["model"], precision=precision, attention=args.attention, compile=compile_, seed=args.seed
        )
        return load_dnabert_s(cfg, device)

    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": environment_info(),
        "config": {
            **preset,
            "device": str(device),
            "seed": args.seed,
            "attention": args.attention,
            "smoke": args.smoke,
        },
        "equivalence": {},
        "throughput": [],
        "notes": [],
    }

    # ---- Part A: equivalence --------------------------------------------------------------------
    t = time.perf_counter()
    ref_model = load("fp32")
    result["load_s"] = time.perf_counter() - t
    seqs = random_dna(rng.integers(150, 501, preset["n_cos"]), rng)
    t = time.perf_counter()
    reference = ref_model.embed_reference(seqs, batch_size=preset["ref_batch"])
    synchronize(device)
    result["reference_s"] = time.perf_counter() - t
    token_ids = ref_model.tokenizer.encode_batch(seqs)
    plan = plan_batches([ids.size for ids in token_ids], preset["budget"])
    del ref_model

    for precision in ("fp16", "bf16", "fp32"):
        model = load(precision)
        pooled = torch.empty_like(reference)
        with torch.inference_mode():
            for ids, cu, max_len, idx in preload_packed(token_ids, plan, device):
                pooled[torch.as_tensor(idx, device=pooled.device)] = model.embed_packed(ids, cu, max_len)
        result["equivalence"][precision] = {"backend": model.backend, **cosine_stats(pooled, reference)}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- Part B: throughput (fp16) --------------------------------------------------------------
    lengths_bp = rng.integers(150, 501, max(int(preset["tokens"] / 85), 16))
    bench_seqs = random_dna(lengths_bp, rng)
    model = load("fp16")
    bench_ids = model.tokenizer.encode_batch(bench_seqs)
    lengths = [ids.size for ids in bench_ids]
    tokens = int(sum(lengths))
    budget = preset["budget"]
    warm = preset["warmup_batches"]

    pad_plan = padded_plan(lengths, budget)
    padded = to_padded(bench_ids, pad_plan, model.tokenizer.pad_id, device)
    params = dict(model.bert.state_dict())
    padded_slots = int(sum(ids.numel() for ids, _, _ in padded))

    def run_padded(batches=padded):
        with torch.inference_mode():
            for ids, mask, _ in batches:
                masked_mean(padded_reference_forward(params, model.arch, ids, mask, dtype=model.dtype), mask)

    packed_plan = plan_batches(lengths, budget)
    packed = preload_packed(bench_ids, packed_plan, device)

    def run_packed(m, batches=packed):
        with torch.inference_mode():
            for ids, cu, max_len, _ in batches:
                m.embed_packed(ids, cu, max_len)

    def record(path: str, backend: str, seconds: float, n_batches: int, efficiency: float, warmup_s: float):
        result["throughput"].append(
            {
                "path": path,
                "precision": "fp16",
                "backend": backend,
                "tokens": tokens,
                "sequences": len(lengths),
                "batches": n_batches,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "efficiency": efficiency,
                "warmup_s": warmup_s,
            }
        )

    warmup_s = timed(lambda: run_padded(padded[-warm:]), device)
    record(
        "padded", "matmul-softmax", timed(run_padded, device), len(padded), tokens / padded_slots, warmup_s
    )
    eff = packing_efficiency(lengths, packed_plan, budget)
    warmup_s = timed(lambda: run_packed(model, packed[:warm]), device)
    record(
        "packed eager", model.backend, timed(lambda: run_packed(model), device), len(packed), eff, warmup_s
    )
    model = params = None  # free the fp16 weights before the compiled model is built

    if preset["compile"]:
        if time.perf_counter() - t_start > COMPILE_DEADLINE_S:
            result["notes"].append(f"compiled run skipped: {time.perf_counter() - t_start:.0f}s already used")
        else:
            compiled = load("fp16", compile_=True)
            # warm-up over batches of several shapes so dynamic-shape compilation is done before timing
            warmup_s = timed(lambda: run_packed(compiled, packed[:warm] + packed[-warm:]), device)
            record(
                "packed compiled",
                compiled.backend,
                timed(lambda: run_packed(compiled), device),
                len(packed),
                eff,
                warmup_s,
            )
            # the compiled graph must give the same embeddings as the eager one
            pooled = torch.empty_like(reference)
            with torch.inference_mode():
                for ids, cu, max_len, idx in preload_packed(token_ids, plan, device):
                    pooled[torch.as_tensor(idx, device=pooled.device)] = compiled.embed_packed(
                        ids, cu, max_len
                    )
            result["equivalence"]["fp16 compiled"] = {
                "backend": compiled.backend,
                **cosine_stats(pooled, reference),
            }

    base = result["throughput"][0]["tokens_per_s"]
    for row in result["throughput"]:
        row["speedup_vs_padded"] = row["tokens_per_s"] / base
    best = max(r["tokens_per_s"] for r in result["throughput"] if r["path"].startswith("packed"))
    eq = result["equivalence"]
    result["goals"] = {
        "fp16_cos_min>=0.9999": eq["fp16"]["cos_min"] >= 0.9999,
        "bf16_cos_min>=0.999": eq["bf16"]["cos_min"] >= 0.999,
        "packed>=1M_tok/s": best >= 1_000_000,
    }
    result["seconds_total"] = time.perf_counter() - t_start
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"model {result['config']['model']} on {result['config']['device']}",
        "precision      backend       cos_min     cos_p001    cos_mean    rel_l2_max",
    ]
    for p, s in result["equivalence"].items():
        lines.append(
            f"{p:<14} {s['backend']:<13} {s['cos_min']:.7f}  {s['cos_p001']:.7f}  {s['cos_mean']:.7f}"
            f"  {s['rel_l2_max']:.2e}"
        )
    lines.append("")
    lines.append(f"{'path':<16} {'backend':<15} {'tok/s':>12} {'x padded':>9} {'eff':>6} {'warmup_s':>9}")
    for r in result["throughput"]:
        lines.append(
            f"{r['path']:<16} {r['backend']:<15} {r['tokens_per_s']:>12,.0f} "
            f"{r['speedup_vs_padded']:>9.2f} {r['efficiency']:>6.3f} {r['warmup_s']:>9.1f}"
        )
    for note in result["notes"]:
        lines.append(f"note: {note}")
    lines.append("")
    lines.append("goals: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in result["goals"].items()))
    lines.append(f"total {result['seconds_total']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument("--model", default=None, help="DNABERT-S specifier (default random:dnabert-s)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--attention", default="auto", help="attention backend (default auto)")
    parser.add_argument("--n-cos", type=int, default=None, help="sequences in the equivalence part")
    parser.add_argument("--budget", type=int, default=None, help="tokens per packed / padded batch")
    parser.add_argument("--tokens", type=int, default=None, help="approximate tokens in the throughput part")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled packed run")
    parser.add_argument(
        "--compile", action="store_true", help="force the compiled packed run (also in --smoke)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args)
    save(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
