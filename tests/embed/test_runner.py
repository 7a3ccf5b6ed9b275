"""The shard runner: packed batches -> pooled rows -> parts, against per-sequence references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import EmbedConfig, EncoderConfig
from pipeline.core.errors import ConfigError, InputError, NumericalError
from pipeline.embed.loader import TokenArena, collate_packed, tokenize_shard
from pipeline.embed.parts import open_embeddings
from pipeline.embed.runner import embed_shard
from pipeline.models.base import EncoderInfo, PackedEncoder, Tokenizer

AA = "ACDEFGHIKLMNPQRSTVWY"


class CharTokenizer(Tokenizer):
    """BOS=0, EOS=1, residues 2..21."""

    def encode(self, sequence: str) -> np.ndarray:
        return np.array([0] + [2 + AA.index(c) for c in sequence] + [1], dtype=np.int64)

    @property
    def pad_id(self) -> int:
        return 22


class ToyEncoder(PackedEncoder):
    """Embedding plus each sequence's own mean (so mixing sequences in a batch would show), mean-pooled
    over residues. `embed_reference` runs one sequence at a time with no packing at all."""

    def __init__(self, dim: int = 8, poison: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(23, dim)
        self.info = EncoderInfo(
            kind="esm2",
            spec="toy",
            hidden_size=dim,
            num_layers=1,
            repr_layer=1,
            max_tokens=64,
            params=23 * dim,
        )
        self.backend = "toy"
        self.tokenizer = CharTokenizer()
        self.poison = poison

    def forward(self, input_ids, cu_seqlens, max_seqlen):
        x = self.emb(input_ids)
        lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        seg = torch.repeat_interleave(torch.arange(lens.numel()), lens)
        means = torch.zeros(lens.numel(), x.shape[1]).index_add_(0, seg, x) / lens[:, None]
        return torch.tanh(x + means[seg])

    def pool(self, hidden, cu_seqlens):
        out = []
        for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            out.append(hidden[a + 1 : b - 1].mean(0))
        return torch.stack(out).float()

    def embed_packed(self, input_ids, cu_seqlens, max_seqlen):
        out = super().embed_packed(input_ids, cu_seqlens, max_seqlen)
        if self.poison is not None:
            toks = self.tokenizer.encode(self.poison)
            for i, (a, b) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
                if b - a == toks.size and torch.equal(input_ids[a:b], torch.from_numpy(toks)):
                    out[i] = float("nan")
        return out

    def embed_reference(self, sequences):
        rows = []
        for s in sequences:
            ids = torch.from_numpy(self.tokenizer.encode(s))
            x = self.emb(ids)
            h = torch.tanh(x + x.mean(0))
            rows.append(h[1:-1].mean(0))
        return torch.stack(rows)


def random_proteins(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(AA), int(rng.integers(lo, hi)))) for _ in range(n)]


def write_shard(path: Path, proteins: list[str], ids: list[str] | None = None) -> Path:
    ids = ids or [f"seq{i}_F1" for i in range(len(proteins))]
    pd.DataFrame(
        {"id": ids, "nucleotide": ["ACG" * len(p) for p in proteins], "protein": proteins}
    ).to_parquet(path, index=False)
    return path


def cfg(**kw) -> EmbedConfig:
    base = dict(
        encoder=EncoderConfig("toy"),
        device="cpu",
        token_budget=64,
        num_workers=0,
        part_size=7,
        progress=False,
    )
    base.update(kw)
    return EmbedConfig(**base)


def test_collate_packed_gathers_rows_in_order() -> None:
    tok = CharTokenizer()
    arena = tokenize_shard(tok, ["AC", "DEFG", "H"], num_workers=0)
    assert arena.lengths.tolist() == [4, 6, 3]
    batch = collate_packed(arena, np.array([1, 2]))
    assert batch.input_ids.tolist() == [0, 4, 5, 6, 7, 1, 0, 8, 1]
    assert batch.cu_seqlens.tolist() == [0, 6, 9] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 6 and batch.rows.tolist() == [1, 2]
    assert batch.input_ids.dtype == torch.int64


def test_tokenize_with_a_spawned_worker(tmp_path: Path) -> None:
    seqs = random_proteins(30)
    shard = write_shard(tmp_path / "s.parquet", seqs)
    arena = tokenize_shard(CharTokenizer(), seqs, num_workers=1, shard=(str(shard), "protein"), chunk=8)
    want = np.concatenate([CharTokenizer().encode(s) for s in seqs])
    assert np.array_equal(arena.tokens, want) and isinstance(arena, TokenArena)


def test_toy_shard_matches_per_sequence_reference(tmp_path: Path) -> None:
    seqs = random_proteins(40)
    shard = write_shard(tmp_path / "s.parquet", seqs)
    enc = ToyEncoder()
    record = embed_shard(shard, None, "esm2", cfg(), tmp_path / "out", encoder=enc)
    es = open_embeddings(tmp_path / "out")
    assert sorted(es.ids.tolist()) == sorted(f"seq{i}_F1" for i in range(40))
    # rows are in length-descending order, ties by shard order
    lengths = [len(seqs[int(i[3:-3])]) for i in es.ids]
    assert lengths == sorted(lengths, reverse=True)
    with torch.no_grad():
        ref = enc.embed_reference(seqs).numpy()
    got = es.lookup([f"seq{i}_F1" for i in range(40)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    stage = record["stages"][0]
    assert stage["sequences"] == 40 and stage["parts_written"] == 6  # ceil(40 / 7)
    assert stage["tokens"] == sum(len(s) + 2 for s in seqs)
    # real tokens / (batches x budget); every row here fits the budget of 64
    assert stage["packing_efficiency"] == round(stage["tokens"] / (stage["batches"] * 64), 5)
    assert json.loads((tmp_path / "out" / "run_record.json").read_text())["schema"] == "virnucpro.run/1"
    assert es.metadata["kind"] == "esm2" and es.metadata["hidden_size"] == 8


def test_batches_and_packing_efficiency_follow_the_hand_worked_ffd_plan(tmp_path: Path) -> None:
    # Token counts (residues + BOS + EOS) 10, 40, 5, 15, 6, 20, 12 with a budget of 32. First fit
    # decreasing: 40 > 32 alone; 20 -> A (12 left); 15 -> B (17 left); 12 -> A (full); 10 -> B
    # (7 left); 6 -> B (1 left); 5 -> C. Efficiency = 108 real tokens / (40 + 3 x 32) = 108 / 136,
    # the oversize batch counting its own length as its capacity.
    seqs = ["A" * (n - 2) for n in (10, 40, 5, 15, 6, 20, 12)]
    shard = write_shard(tmp_path / "s.parquet", seqs)
    seen: list[tuple[int, ...]] = []

    class Recording(ToyEncoder):
        def forward(self, input_ids, cu_seqlens, max_seqlen):
            seen.append(tuple(torch.diff(cu_seqlens).tolist()))
            return super().forward(input_ids, cu_seqlens, max_seqlen)

    record = embed_shard(shard, None, "esm2", cfg(token_budget=32), tmp_path / "out", encoder=Recording())
    assert sorted(seen) == sorted([(40,), (20, 12), (15, 10, 6), (5,)])
    stage = record["stages"][0]
    assert (stage["batches"], stage["token_budget"], stage["tokens"]) == (4, 32, 108)
    assert stage["packing_efficiency"] == pytest.approx(108 / 136, abs=1e-5)


def test_budget_smaller_than_a_sequence_still_embeds_it(tmp_path: Path) -> None:
    seqs = ["A" * 30, "C" * 5, "D" * 40]
    shard = write_shard(tmp_path / "s.parquet", seqs)
    enc = ToyEncoder()
    embed_shard(shard, "protein", "esm2", cfg(token_budget=16, progress=True), tmp_path / "out", encoder=enc)
    es = open_embeddings(tmp_path / "out")
    with torch.no_grad():
        ref = enc.embed_reference(seqs).numpy()
    np.testing.assert_allclose(es.lookup(["seq0_F1", "seq1_F1", "seq2_F1"]), ref, rtol=1e-5, atol=1e-6)


def test_nan_names_the_part(tmp_path: Path) -> None:
    seqs = random_proteins(20, seed=1)
    shard = write_shard(tmp_path / "s.parquet", seqs)
    enc = ToyEncoder(poison=seqs[5])
    with pytest.raises(NumericalError, match=r"part \d+ of s.parquet: 1 embedding\(s\).*seq5_F1"):
        embed_shard(shard, None, "esm2", cfg(), tmp_path / "out", encoder=enc)


def test_encoder_finite_flag_is_checked_at_every_part(tmp_path: Path) -> None:
    class Flagged(ToyEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.contexts: list[str] = []

        def check_finite(self, context: str) -> None:
            self.contexts.append(context)
            if len(self.contexts) == 3:
                raise NumericalError(f"device flag set in {context}")

    shard = write_shard(tmp_path / "s.parquet", random_proteins(30, seed=2))
    enc = Flagged()
    with pytest.raises(NumericalError, match=r"device flag set in s.parquet part \d+"):
        embed_shard(shard, None, "esm2", cfg(), tmp_path / "out", encoder=enc)
    assert len(enc.contexts) == 3
    # the two parts checked before the failure were written; the failing one was not
    assert len(list((tmp_path / "out").glob("part-*.done"))) == 2


def test_bad_inputs(tmp_path: Path) -> None:
    enc = ToyEncoder()
    with pytest.raises(InputError, match="does not exist"):
        embed_shard(tmp_path / "missing.parquet", None, "esm2", cfg(), tmp_path / "o1", encoder=enc)
    shard = write_shard(tmp_path / "s.parquet", ["ACD"])
    pd.DataFrame({"id": ["a"], "dna": ["ACG"]}).to_parquet(tmp_path / "wrong.parquet")
    with pytest.raises(InputError, match="no column 'protein'"):
        embed_shard(tmp_path / "wrong.parquet", None, "esm2", cfg(), tmp_path / "o2", encoder=enc)
    with pytest.raises(ConfigError, match="not a sequence column"):
        embed_shard(shard, "id", "esm2", cfg(), tmp_path / "o3", encoder=enc)
    with pytest.raises(ConfigError, match="kind 'bert'"):
        embed_shard(shard, None, "bert", cfg(), tmp_path / "o4", encoder=enc)
    (tmp_path / "notparquet.parquet").write_text("hello")
    with pytest.raises(InputError, match="not a readable parquet"):
        embed_shard(tmp_path / "notparquet.parquet", None, "esm2", cfg(), tmp_path / "o5", encoder=enc)
    write_shard(tmp_path / "dup.parquet", ["AC", "DE"], ids=["x", "x"])
    with pytest.raises(InputError, match="'x' appears more than once"):
        embed_shard(tmp_path / "dup.parquet", None, "esm2", cfg(), tmp_path / "o6", encoder=enc)
    write_shard(tmp_path / "long.parquet", ["A" * 100])
    with pytest.raises(InputError, match="exceed the model's 64 tokens"):
        embed_shard(tmp_path / "long.parquet", None, "esm2", cfg(), tmp_path / "o7", encoder=enc)


def test_non_empty_output_dir_refused_without_resume(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s.parquet", random_proteins(5))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty; pass --resume"):
        embed_shard(shard, None, "esm2", cfg(), tmp_path / "out", encoder=ToyEncoder())


def test_empty_shard(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s.parquet", [], ids=[])
    record = embed_shard(shard, None, "esm2", cfg(), tmp_path / "out", encoder=ToyEncoder())
    assert record["stages"][0]["sequences"] == 0
    es = open_embeddings(tmp_path / "out")
    assert len(es) == 0 and es.vectors.shape == (0, 8)


# ---- real tiny random models: packed runner vs the model's own padded fp32 reference -----------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cli_esm2_shard_matches_reference(tmp_path: Path, one_thread) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.core.config import EncoderConfig as EC
    from pipeline.models.registry import load_encoder

    seqs = random_proteins(18, seed=3, lo=5, hi=60)
    shard = write_shard(tmp_path / "shard-000.parquet", seqs)
    result = CliRunner().invoke(
        cli,
        [
            "embed",
            str(shard),
            "--kind",
            "esm2",
            "--model",
            "random:esm2_t6_8M_UR50D",
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--token-budget",
            "128",
            "--part-size",
            "5",
            "--num-workers",
            "0",
        ],
        env={"VIRNUCPRO_PROGRESS": "0"},
    )
    assert result.exit_code == 0, result.output
    assert "embedded 18 sequences" in result.output
    es = open_embeddings(tmp_path / "out")
    assert es.metadata["model"] == "random:esm2_t6_8M_UR50D" and es.vectors.shape == (18, 320)
    enc = load_encoder("esm2", EC("random:esm2_t6_8M_UR50D"), "cpu")
    ref = enc.embed_reference(seqs).cpu().numpy()
    got = es.lookup([f"seq{i}_F1" for i in range(18)])
    cos = _cosines(got, ref)
    assert cos.min() > 0.99999, cos
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    record = json.loads((tmp_path / "out" / "run_record.json").read_text())
    stage = record["stages"][0]
    assert stage["backend"] == enc.backend and stage["device"] == "cpu" and stage["precision"] == "fp32"
    assert set(record["timings"]) >= {"read_s", "load_model_s", "tokenize_s", "embed_s", "write_s"}


def test_dnabert_s_shard_matches_reference(tmp_path: Path, one_thread) -> None:
    from pipeline.models.registry import load_encoder

    rng = np.random.default_rng(5)
    dna = ["".join(rng.choice(list("ACGT"), int(rng.integers(20, 150)))) for _ in range(14)]
    ids = [f"d{i}" for i in range(14)]
    pd.DataFrame({"id": ids, "nucleotide": dna, "protein": ["M"] * 14}).to_parquet(tmp_path / "s.parquet")
    enc = load_encoder("dnabert-s", EncoderConfig("random:dnabert-s-tiny"), "cpu")
    c = cfg(encoder=EncoderConfig("random:dnabert-s-tiny"), token_budget=64, part_size=4)
    record = embed_shard(tmp_path / "s.parquet", None, "dnabert-s", c, tmp_path / "out", encoder=enc)
    assert record["config"]["column"] == "nucleotide"
    es = open_embeddings(tmp_path / "out")
    ref = enc.embed_reference(dna).cpu().numpy()
    cos = _cosines(es.lookup(ids), ref)
    assert cos.min() > 0.99999, cos
    # the token counts used for packing are the tokenizer's, not the sequence lengths
    assert record["stages"][0]["tokens"] == sum(len(enc.tokenizer.encode(s)) for s in dna)


@pytest.mark.gpu
def test_cuda_runner_matches_reference(tmp_path: Path) -> None:
    """The CUDA path (side-stream copies, pinned outputs, events) against the fp32 reference."""
    from pipeline.models.registry import load_encoder

    seqs = random_proteins(200, seed=4, lo=5, hi=120)
    shard = write_shard(tmp_path / "s.parquet", seqs)
    c = cfg(
        encoder=EncoderConfig("random:esm2_t6_8M_UR50D", precision="fp16"),
        device="cuda",
        token_budget=1024,
        part_size=32,
    )
    record = embed_shard(shard, None, "esm2", c, tmp_path / "out")
    stage = record["stages"][0]
    assert stage["device_idle_fraction"] is not None and 0 <= stage["device_idle_fraction"] <= 1
    es = open_embeddings(tmp_path / "out")
    enc = load_encoder("esm2", EncoderConfig("random:esm2_t6_8M_UR50D"), "cuda")
    ref = enc.embed_reference(seqs).cpu().numpy()
    assert _cosines(es.lookup([f"seq{i}_F1" for i in range(200)]), ref).min() > 0.999


def test_choose_workers_spawns_none_for_parallel_tokenizers_and_some_for_slow_serial_ones():
    from pipeline.embed.loader import choose_workers
    from pipeline.models.base import Tokenizer

    class SlowSerial(Tokenizer):
        def encode(self, sequence: str) -> np.ndarray:
            return np.frombuffer(sequence.encode() * 50, dtype=np.uint8).astype(np.int64)

        @property
        def pad_id(self) -> int:
            return 0

    class Parallel(SlowSerial):
        parallel_batch = True

    seqs = ["ACGT" * 40] * 4000
    assert choose_workers(SlowSerial(), seqs, serial_limit_s=0.0) >= 1
    assert choose_workers(SlowSerial(), seqs, serial_limit_s=1e6) == 0
    assert choose_workers(Parallel(), seqs, serial_limit_s=0.0) == 0
