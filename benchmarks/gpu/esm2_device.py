"""ESM-2 on one device: fidelity of packed fp16 / bf16 / fp8 against fair-esm's padded fp32 forward,
throughput of vanilla fair-esm and of the packed engine in each precision on three length mixes, and
the gain of each engine technique measured by switching it off - all in one run, on the same data.

Part A (fidelity): >= 2,000 random proteins of mixed lengths (mostly 30-166 aa, some up to 1022).
The reference is fair-esm's own ``ESM2.forward`` in fp32 (TF32 off) on length-sorted padded batches;
the packed engine runs the same seeded weights in fp16, bf16 and fp8 (bf16 with the MLP's Linear
layers in FP8, `pipeline.models.fp8`; plus ``fp8-all-linear``: every Linear layer in FP8, and
``fp8-mlp+out``, for the choice). Per-sequence cosine of the pooled embeddings (min, 0.1th
percentile, mean) and relative L2.
Goals: cosine min >= 0.9999 (fp16), >= 0.999 (bf16); fp8 mean >= 0.999 and min >= 0.995.

Part B (throughput): three mixes: short reads (30-60 aa), 500 bp frames (120-166 aa) and wide
(30-400 aa).
- vanilla: fair-esm's ``ESM2.forward`` in fp16 on length-sorted padded batches (fair-esm's own
  ``toks_per_batch`` rule: batch size x longest length <= budget), residue mean in one masked sum;
- packed fp16 / bf16 / fp8 / fp8-all-linear: `PackedESM2` (compiled, the best attention backend)
  on token-budget packed batches (`pipeline.embed.planning.plan_batches`, first-fit decreasing),
  ``embed_packed`` (forward + pooling).
Tokens/s counts real tokens (residues + BOS + EOS). Each path runs a warm-up pass over a few batches
(compilation included), then one timed pass over all of them (inputs already on the device).

Part C (ablation, bf16, 500 bp mix): the packed bf16 engine with one technique switched off at a
time (eager instead of compiled, ``dynamic=True`` compilation, erf GELU instead of the matmul
epilogue) and at other token budgets. (The v2 result JSON also has a row "residual add unfused": a
deferred residual add fused with the next LayerNorm measured no gain and was dropped.) On the short-read
mix, bf16 and fp8: the memory-efficient kernel for short batches (`SHORT_SEQUENCE_TOKENS`) against
FA2, back to back (``--short-kernel-only`` runs just that); with ``--autotune``, inductor's
``max-autotune-no-cudagraphs`` compile mode.

``--fp8-variants-only``: part A's reference, then fidelity and throughput of fp8 with fc1+fc2 (the
default), fc1 alone and fc2 alone in FP8, nothing else.

Goals on one H200 with ESM-2 3B: fp16 or bf16 >= 105K tokens/s on every mix and >= 2.5x vanilla on
the wide mix; fp8 >= 140K tokens/s at the fidelity above.

Usage (GPU):  python benchmarks/gpu/esm2_device.py --out esm2.json
Usage (CPU):  python benchmarks/gpu/esm2_device.py --smoke --out /tmp/esm2.json   (fp32 only; fp8 is
              refused on CPU and recorded as such)
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

SCHEMA = "virnucpro.bench.esm2/2"
AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
ALL_LINEAR = ("qkv", "out", "fc1", "fc2")
#: fp8 rows: the engine's default selection (None = `FP8_TARGETS`) and two others, for the decision
FP8_VARIANTS = (("fp8", None), ("fp8-all-linear", ALL_LINEAR), ("fp8-mlp+out", ("out", "fc1", "fc2")))
#: ``--fp8-variants-only``: the default against each MLP layer alone in FP8 (fidelity against speed)
FP8_MLP_VARIANTS = (("fp8", None), ("fp8-fc1", ("fc1",)), ("fp8-fc2", ("fc2",)))

GPU = {
    "model": "random:esm2_t36_3B_UR50D",
    "n_cos": 2000,
    "ref_budget": 16384,
    "budget": 65536,
    "mix_tokens": 400_000,
    "ablation_tokens": 250_000,
    "warmup_batches": 2,
    "max_len": 1022,
}
SMOKE = {
    "model": "random:esm2_t6_8M_UR50D",
    "n_cos": 8,
    "ref_budget": 512,
    "budget": 512,
    "mix_tokens": 300,
    "ablation_tokens": 300,
    "warmup_batches": 1,
    "max_len": 120,
}
MIXES = {"short_reads_30-60aa": (30, 60), "frames_500bp_120-166aa": (120, 166), "wide_30-400aa": (30, 400)}
FP8_NAMES = ("fp8", "fp8-all-linear", "fp8-mlp+out", "fp8-fc1", "fp8-fc2")
GOAL_COS_MIN = {"fp16": 0.9999, "bf16": 0.999} | dict.fromkeys(FP8_NAMES, 0.995)
GOAL_COS_MEAN = dict.fromkeys(FP8_NAMES, 0.999)


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


class Bench:
    """State of one run: data, reference, result document, clock."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from pipeline.core.runinfo import environment_info

        self.args = args
        self.sizes = SMOKE if args.smoke else GPU
        self.device = torch.device("cpu" if args.smoke else args.device)
        self.spec = args.model or self.sizes["model"]
        self.budget = args.budget or self.sizes["budget"]
        self.t_start = time.perf_counter()
        self.rng = np.random.default_rng(args.seed)
        self.result: dict[str, Any] = {
            "schema": SCHEMA,
            "environment": environment_info(),
            "machine": _machine(self.device),
            "config": {
                "model": self.spec,
                "device": str(self.device),
                "seed": args.seed,
                **self.sizes,
                "budget": self.budget,
            },
            "equivalence": {},
            "throughput": [],
            "ablation": [],
            "skipped": [],
        }

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:6.1f}s] {msg}", flush=True)

    def time_left(self) -> float:
        return self.args.max_seconds - (time.perf_counter() - self.t_start)

    def save(self) -> None:
        self.result["seconds_total"] = time.perf_counter() - self.t_start
        save(self.args.out, self.result)

    def free(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _machine(device) -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {"host_cpu_count": __import__("os").cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    versions = {"torch": torch.__version__}
    for name in ("triton", "torchao", "esm"):
        try:
            versions[name] = getattr(__import__(name), "__version__", "installed")
        except Exception:  # noqa: BLE001 - a missing optional package is recorded, not fatal
            versions[name] = None
    info["versions"] = versions
    return info


def load(b: Bench, precision: str, *, compile_: bool, base=None, fp8_targets=None):
    """A packed engine in ``precision``; ``base`` (an engine already loaded) lends its weights so that
    an fp8 variant needs no second copy of the fair-esm module."""
    from pipeline.core.config import EncoderConfig
    from pipeline.models.esm2 import PackedESM2, load_esm2

    t0 = time.perf_counter()
    if base is None:
        cfg = EncoderConfig(b.spec, precision=precision, attention="auto", seed=b.args.seed)
        m = load_esm2(cfg, b.device)
        if m.compiled and not compile_:
            m.disable_compile()
    else:
        m = PackedESM2(
            base.esm, spec=b.spec, precision=precision, backend=base.backend, fp8_targets=fp8_targets
        )
    if compile_ and not m.compiled:
        m.enable_compile(b.args.compile_backend)
    b.log(
        f"loaded {b.spec} {precision} backend={m.backend} compiled={m.compiled} fp8={m.fp8_targets} "
        f"gelu_epilogue={m.gelu_epilogue} in {time.perf_counter() - t0:.1f}s"
    )
    return m


def reference(b: Bench, seqs: list[str]):
    """fair-esm fp32 padded forward (TF32 off), residue-mean pooled: ``(N, D) float32``."""
    import torch

    m = load(b, "fp32", compile_=False)
    tok = m.tokenizer
    ids = [tok.encode(s) for s in seqs]
    lens = [t.size for t in ids]
    special = (tok.cls_idx, tok.eos_idx, tok.pad_id)
    ref = torch.empty(len(seqs), m.embed_dim, dtype=torch.float32, device=b.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for toks, idx in padded_batches(ids, padded_plan(lens, b.sizes["ref_budget"]), tok.pad_id, b.device):
            rep = m.esm(toks, repr_layers=[m.num_layers])["representations"][m.num_layers]
            ref[torch.as_tensor(idx, device=b.device)] = padded_pool(rep, toks, special)
        synchronize(b.device)
    b.log(f"fp32 reference for {len(seqs)} sequences in {time.perf_counter() - t0:.1f}s")
    del m
    b.free()
    return ref, ids


def fidelity(b: Bench, name: str, m, ids: list[np.ndarray], ref) -> dict[str, Any]:
    import torch

    out = torch.empty_like(ref)
    plan = pack_plan([t.size for t in ids], b.budget)
    with torch.inference_mode():
        for i, cu, maxlen, idx in preload_packed(ids, plan, b.device, cu_on_device=False):
            out[torch.as_tensor(idx, device=b.device)] = m.embed_packed(i, cu, maxlen)
    m.check_finite(f"fidelity {name}")
    stats = cosine_stats(out, ref)
    stats.update(backend=m.backend, fp8_targets=list(m.fp8_targets), gelu_epilogue=m.gelu_epilogue)
    goal = GOAL_COS_MIN.get(name)
    if goal is not None:
        stats["goal_cos_min"] = goal
        stats["goal_cos_mean"] = GOAL_COS_MEAN.get(name)
        stats["pass"] = stats["cos_min"] >= goal and stats["cos_mean"] >= GOAL_COS_MEAN.get(name, 0.0)
    b.log(f"fidelity {name}: {json.dumps({k: v for k, v in stats.items() if k.startswith('cos')})}")
    return stats


def throughput(b: Bench, m, mix: str, data: dict[str, Any], path: str, budget: int | None = None) -> dict:
    """Warm-up over a few batches, then one timed pass of ``embed_packed`` over the mix."""
    import torch

    budget = budget or b.budget
    ids = data["ids"]
    pk = preload_packed(ids, pack_plan(data["lens"], budget), b.device, cu_on_device=False)

    def run(batches=pk):
        for i, cu, maxlen, _ in batches:
            m.embed_packed(i, cu, maxlen)

    with torch.inference_mode():
        warm_s = timed(lambda: run(pk[: b.sizes["warmup_batches"]]), b.device)
        seconds = timed(run, b.device)
    m.check_finite(f"throughput {mix} {path}")
    row = {
        "mix": mix,
        "path": path,
        "backend": m.backend,
        "precision": m.precision,
        "compiled": m.compiled,
        "fp8_targets": list(m.fp8_targets),
        "gelu_epilogue": m.gelu_epilogue,
        "sequences": len(ids),
        "tokens": data["tokens"],
        "batches": len(pk),
        "token_budget": budget,
        "seconds": seconds,
        "tokens_per_s": data["tokens"] / seconds,
        "warmup_seconds": warm_s,
        "efficiency": data["tokens"] / (len(pk) * budget),
    }
    if m.compiled:
        row["compile_stats"] = m.compile_stats()
    b.log(f"{mix} {path}: {row['tokens_per_s']:,.0f} tok/s ({seconds:.2f}s, warm-up {warm_s:.1f}s)")
    return row


def vanilla(b: Bench, m, mix: str, data: dict[str, Any]) -> dict:
    """fair-esm's own forward on padded, length-sorted batches in ``m``'s precision."""
    import torch

    tok = m.tokenizer
    special = (tok.cls_idx, tok.eos_idx, tok.pad_id)
    pd = padded_batches(data["ids"], padded_plan(data["lens"], b.budget), tok.pad_id, b.device)

    def run(batches=pd):
        for toks, _ in batches:
            rep = m.esm(toks, repr_layers=[m.num_layers])["representations"][m.num_layers]
            padded_pool(rep, toks, special)

    with torch.inference_mode():
        warm_s = timed(lambda: run(pd[: b.sizes["warmup_batches"]]), b.device)
        seconds = timed(run, b.device)
    row = {
        "mix": mix,
        "path": "vanilla",
        "backend": "fair-esm",
        "precision": m.precision,
        "sequences": len(data["ids"]),
        "tokens": data["tokens"],
        "batches": len(pd),
        "token_budget": b.budget,
        "seconds": seconds,
        "tokens_per_s": data["tokens"] / seconds,
        "warmup_seconds": warm_s,
        "efficiency": data["tokens"] / sum(t.numel() for t, _ in pd),
    }
    b.log(f"{mix} vanilla: {row['tokens_per_s']:,.0f} tok/s ({seconds:.2f}s)")
    return row


def guarded(b: Bench, name: str, fn, need: float = 30.0):
    """Run one step unless the time budget is spent; a failure is recorded, not fatal."""
    if b.time_left() < need:
        b.result["skipped"].append(f"{name}: time budget (--max-seconds {b.args.max_seconds})")
        b.log(f"skip {name}: time")
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' numbers
        import traceback

        traceback.print_exc(limit=4)
        b.result["skipped"].append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
        b.log(f"FAILED {name}: {type(exc).__name__}: {str(exc)[:300]}")
        return None


def ablation(b: Bench, m, data: dict[str, Any], mix: str) -> None:
    """bf16 engine with one technique off at a time (same data as the mix's packed bf16 row)."""
    import torch

    from pipeline.models.esm2.model import packed_layer

    rows = b.result["ablation"]

    def variant(name: str, setup, teardown, budget: int | None = None):
        def go():
            setup()
            try:
                row = throughput(b, m, mix, data, name, budget)
            finally:
                teardown()
            rows.append(row)
            b.save()

        guarded(b, f"ablation {name}", go, need=25)

    compiled_fn, compiled, epilogue = m._layer_fn, m.compiled, m.gelu_epilogue

    def restore():
        m._layer_fn, m.compiled, m.gelu_epilogue = compiled_fn, compiled, epilogue

    def dynamic_true():
        m._layer_fn = torch.compile(packed_layer, dynamic=True, backend=b.args.compile_backend)

    def eager():
        m._layer_fn, m.compiled = packed_layer, False

    variant("all-techniques", lambda: None, restore)
    if epilogue:
        variant("erf-gelu (no matmul epilogue)", lambda: setattr(m, "gelu_epilogue", False), restore)
    if compiled:
        variant("compiled dynamic=True (symbolic widths)", dynamic_true, restore)
        variant("eager (not compiled)", eager, restore)
    for budget in (32768, 131072):
        if budget != b.budget:
            variant(f"token budget {budget}", lambda: None, restore, budget=budget)


def short_kernel_ab(b: Bench, m, mixes: dict[str, dict[str, Any]], name: str) -> None:
    """``m`` on the short-read mix with the memory-efficient kernel for short batches (the default) and
    with FA2 everywhere, one after the other in the same process."""
    from pipeline.models import attention

    short, mix = attention.SHORT_SEQUENCE_TOKENS, "short_reads_30-60aa"

    def go():
        b.result["ablation"].append(throughput(b, m, mix, mixes[mix], f"{name} short-batch kernel"))
        attention.SHORT_SEQUENCE_TOKENS = 0  # a guarded global: the compiled layer recompiles once
        try:
            b.result["ablation"].append(throughput(b, m, mix, mixes[mix], f"{name} FA2 for short batches"))
        finally:
            attention.SHORT_SEQUENCE_TOKENS = short
        b.save()

    guarded(b, f"{name} short-batch kernel A/B", go, need=30)


def autotune_rows(b: Bench, m, mixes: dict[str, dict[str, Any]], name: str) -> None:
    """``m`` compiled in inductor's ``max-autotune-no-cudagraphs`` mode (``--autotune``: its compile took
    44 s in bf16 and 225 s in fp8 on an H200); bf16 on every mix, fp8 on the 500 bp mix."""
    import torch

    from pipeline.models.esm2.model import packed_layer

    if not m.compiled:
        return
    compiled_fn = m._layer_fn
    m._layer_fn = torch.compile(
        packed_layer, mode="max-autotune-no-cudagraphs", backend=b.args.compile_backend
    )
    try:
        for mix, data in mixes.items():
            if name != "packed-bf16" and not mix.startswith("frames"):
                continue

            def go(mix=mix, data=data):
                b.result["ablation"].append(throughput(b, m, mix, data, f"{name} max-autotune"))
                b.save()

            guarded(b, f"{name} max-autotune {mix}", go, need=90)
    finally:
        m._layer_fn = compiled_fn


def short_kernel_only(b: Bench, mixes: dict[str, dict[str, Any]]) -> None:
    """``--short-kernel-only``: the short-batch kernel A/B in bf16 and fp8, nothing else."""
    from pipeline.models.esm2.model import FP8_TARGETS
    from pipeline.models.fp8 import fp8_unavailable_reason

    m = load(b, "bf16" if b.device.type == "cuda" else "fp32", compile_=True)
    short_kernel_ab(b, m, mixes, "packed-bf16")
    if fp8_unavailable_reason(b.device) is None:
        m8 = load(b, "fp8", compile_=True, base=m, fp8_targets=FP8_TARGETS)
        short_kernel_ab(b, m8, mixes, "packed-fp8")


def fp8_variants_only(b: Bench, mixes: dict[str, dict[str, Any]], cos_ids, ref) -> None:
    """``--fp8-variants-only``: which MLP layers pay their fidelity cost in FP8 (`FP8_MLP_VARIANTS`)."""
    from pipeline.models.fp8 import fp8_unavailable_reason

    reason = fp8_unavailable_reason(b.device)
    if reason is not None:
        b.result["skipped"].append(f"fp8: {reason}")
        return
    base = load(b, "bf16", compile_=True)
    fp8_rows(b, base, FP8_MLP_VARIANTS, mixes, cos_ids, ref)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipeline.models.fp8 import fp8_unavailable_reason

    b = Bench(args)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must stay true fp32
    torch.backends.cudnn.allow_tf32 = False
    # one process compiles the layer for four precisions and five ablations: more than dynamo's default
    # eight cache entries per function, after which it would silently fall back to eager
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    if args.smoke:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    try:
        from pipeline.embed.planning import choose_token_budget
        from pipeline.models.esm2 import PackedESM2

        free = torch.cuda.mem_get_info(b.device)[0] if b.device.type == "cuda" else None
        b.result["config"]["production_token_budget"] = choose_token_budget(
            device_type=b.device.type,
            hidden_size=2560,
            dtype_bytes=2,
            free_bytes=free,
            max_budget=PackedESM2.best_token_budget,
        )
    except Exception:  # noqa: BLE001 - informational only
        pass

    # ---- data ----------------------------------------------------------------------------------
    n_cos = args.n_cos or b.sizes["n_cos"]
    cos_seqs = random_proteins(mixed_lengths(n_cos, b.rng, b.sizes["max_len"]), b.rng)
    from pipeline.models.esm2 import ESM2Tokenizer

    tok = ESM2Tokenizer.default()
    mixes: dict[str, dict[str, Any]] = {}
    for mix, (lo, hi) in MIXES.items():
        seqs = random_proteins(lengths_for_tokens(lo, hi, b.sizes["mix_tokens"], b.rng), b.rng)
        ids = [tok.encode(s) for s in seqs]
        lens = [t.size for t in ids]
        mixes[mix] = {"ids": ids, "lens": lens, "tokens": int(sum(lens))}
    if args.short_kernel_only:
        short_kernel_only(b, mixes)
        b.result["goals"] = {}
        b.save()
        return b.result
    ref, cos_ids = reference(b, cos_seqs)
    b.save()
    if args.fp8_variants_only:
        fp8_variants_only(b, mixes, cos_ids, ref)
        b.result["goals"] = goals(b.result)
        b.save()
        return b.result

    # ---- per precision: fidelity, throughput (and vanilla / ablation on the way) -----------------
    precisions = ["fp32"] if args.smoke and not args.all_precisions else ["fp16", "bf16"]
    fp8_reason = fp8_unavailable_reason(b.device)
    compile_ = not args.smoke or args.compile_backend != "none"
    for precision in precisions:
        m = guarded(b, f"load {precision}", lambda p=precision: load(b, p, compile_=compile_), need=20)
        if m is None:
            continue
        stats = guarded(b, f"fidelity {precision}", lambda m=m, p=precision: fidelity(b, p, m, cos_ids, ref))
        if stats is not None:
            b.result["equivalence"][precision] = stats
        b.save()
        for mix, data in mixes.items():
            if precision == precisions[0]:
                row = guarded(b, f"vanilla {mix}", lambda m=m, mix=mix, d=data: vanilla(b, m, mix, d))
                if row is not None:
                    b.result["throughput"].append(row)
            row = guarded(
                b,
                f"packed {precision} {mix}",
                lambda m=m, mix=mix, d=data, p=precision: throughput(b, m, mix, d, f"packed-{p}"),
            )
            if row is not None:
                b.result["throughput"].append(row)
            b.save()
        # priority order under --max-seconds: the default fp8, all-Linear fp8, the ablation, then mlp+out
        fp8_now = precision == "bf16" and fp8_reason is None
        fp8_phases = [FP8_VARIANTS[:2], FP8_VARIANTS[2:]] if fp8_now else []
        if fp8_phases:
            fp8_rows(b, m, fp8_phases[0], mixes, cos_ids, ref)
        if precision in ("bf16", "fp32") and not args.no_ablation:
            ablation(b, m, mixes["frames_500bp_120-166aa"], "frames_500bp_120-166aa")
            short_kernel_ab(b, m, mixes, "packed-bf16")
            if args.autotune:
                autotune_rows(b, m, mixes, "packed-bf16")
        if fp8_phases:
            fp8_rows(b, m, fp8_phases[1], mixes, cos_ids, ref)
        del m
        b.free()
    if fp8_reason is not None:
        b.result["skipped"].append(f"fp8: {fp8_reason}")
        b.log(f"fp8 skipped: {fp8_reason}")

    # ---- speed-ups and goals ---------------------------------------------------------------------
    base = {r["mix"]: r["tokens_per_s"] for r in b.result["throughput"] if r["path"] == "vanilla"}
    for row in b.result["throughput"] + b.result["ablation"]:
        if row["mix"] in base:
            row["speedup_vs_vanilla"] = row["tokens_per_s"] / base[row["mix"]]
    b.result["goals"] = goals(b.result)
    b.save()
    return b.result


def fp8_rows(b: Bench, base, variants, mixes: dict[str, dict[str, Any]], cos_ids, ref) -> None:
    """Fidelity and throughput of fp8 engines sharing ``base``'s bf16 weights."""
    for name, targets in variants:
        m8 = guarded(
            b,
            f"load {name}",
            lambda t=targets: load(b, "fp8", compile_=True, base=base, fp8_targets=t or _default_targets()),
            need=40,
        )
        if m8 is None:
            continue
        stats = guarded(b, f"fidelity {name}", lambda m8=m8, n=name: fidelity(b, n, m8, cos_ids, ref))
        if stats is not None:
            b.result["equivalence"][name] = stats
        for mix, data in mixes.items():
            row = guarded(
                b,
                f"packed {name} {mix}",
                lambda m8=m8, mix=mix, d=data, n=name: throughput(b, m8, mix, d, f"packed-{n}"),
            )
            if row is not None:
                b.result["throughput"].append(row)
            b.save()
        if name == "fp8" and not b.args.no_ablation:
            short_kernel_ab(b, m8, mixes, "packed-fp8")
            if b.args.autotune:
                autotune_rows(b, m8, mixes, "packed-fp8")
        del m8
        b.free()


def _default_targets() -> tuple[str, ...]:
    from pipeline.models.esm2.model import FP8_TARGETS

    return FP8_TARGETS


def goals(result: dict[str, Any]) -> dict[str, bool]:
    rows = result["throughput"]
    out: dict[str, bool] = {}
    for name, stats in result["equivalence"].items():
        if "pass" in stats:
            mean = f", mean>={stats['goal_cos_mean']}" if stats.get("goal_cos_mean") else ""
            out[f"{name} fidelity (cos_min>={stats['goal_cos_min']}{mean})"] = stats["pass"]
    for mix in MIXES:
        half = [r for r in rows if r["mix"] == mix and r["path"] in ("packed-fp16", "packed-bf16")]
        if half:
            best = max(half, key=lambda r: r["tokens_per_s"])
            out[f"{mix}: fp16/bf16 >=105K tok/s"] = best["tokens_per_s"] >= 105_000
            if mix.startswith("wide") and "speedup_vs_vanilla" in best:
                out[f"{mix}: fp16/bf16 >=2.5x vanilla"] = best["speedup_vs_vanilla"] >= 2.5
        fp8 = [r for r in rows if r["mix"] == mix and r["path"] == "packed-fp8"]
        if fp8:
            out[f"{mix}: fp8 >=140K tok/s"] = fp8[0]["tokens_per_s"] >= 140_000
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{'precision':<15} {'cos_min':>10} {'cos_p001':>10} {'cos_mean':>10} {'relL2_mean':>10}"]
    for p, s in result["equivalence"].items():
        lines.append(
            f"{p:<15} {s['cos_min']:>10.7f} {s['cos_p001']:>10.7f} {s['cos_mean']:>10.7f} "
            f"{s['rel_l2_mean']:>10.2e}"
        )
    lines.append("")
    lines.append(f"{'mix':<24} {'path':<22} {'budget':>7} {'tok/s':>10} {'x vanilla':>9}")
    for r in result["throughput"]:
        lines.append(
            f"{r['mix']:<24} {r['path']:<22} {r['token_budget']:>7} {r['tokens_per_s']:>10,.0f} "
            f"{r.get('speedup_vs_vanilla', float('nan')):>9.2f}"
        )
    if result["ablation"]:
        lines.append("")
        lines.append("ablation (packed bf16 on the 500 bp mix unless named; fp32 in --smoke):")
        for r in result["ablation"]:
            lines.append(
                f"  {r['path']:<34} {r['mix'][:12]:<12} {r['token_budget']:>7} {r['tokens_per_s']:>10,.0f}"
            )
    lines.append("")
    lines.append("goals: " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in result["goals"].items()))
    for s in result["skipped"]:
        lines.append(f"skipped: {s}")
    lines.append(f"total {result['seconds_total']:.0f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON result path")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, fp32, seconds")
    parser.add_argument("--model", default=None, help="ESM-2 specifier (default random:esm2_t36_3B_UR50D)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-cos", type=int, default=None, help="sequences in the fidelity part")
    parser.add_argument("--budget", type=int, default=None, help="tokens per packed / padded batch")
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default inductor; 'eager' in --smoke)"
    )
    parser.add_argument(
        "--all-precisions", action="store_true", help="--smoke: fp16 and bf16 too (slow on CPU)"
    )
    parser.add_argument("--no-ablation", action="store_true", help="skip part C")
    parser.add_argument(
        "--autotune", action="store_true", help="part C: max-autotune rows too (minutes of compiling)"
    )
    parser.add_argument(
        "--short-kernel-only", action="store_true", help="only the short-batch kernel A/B (bf16, fp8)"
    )
    parser.add_argument(
        "--fp8-variants-only",
        action="store_true",
        help="only the fidelity and throughput of fp8 with fc1+fc2, fc1 alone and fc2 alone in FP8",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=1e9, help="skip the remaining steps after this many seconds"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.smoke else "inductor"
    result = run(args)
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
