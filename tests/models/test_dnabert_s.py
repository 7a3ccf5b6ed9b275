"""DNABERT-S: tokenizer, loader (real checkpoint layout), packed forward vs reference vs an oracle."""

from __future__ import annotations

import json
import pickle

import fixtures.dnabert as fx
import numpy as np
import pytest
import torch

from pipeline.core.config import EncoderConfig
from pipeline.core.errors import ModelLoadError
from pipeline.models.dnabert_s import load_dnabert_s
from pipeline.models.dnabert_s.model import DNABERTArch, alibi_slopes, segment_mean
from pipeline.models.dnabert_s.tokenizer import DNABERTTokenizer

torch.set_num_threads(1)

COS_MIN = 0.9999


def _pack(model, sequences):
    encoded = [model.tokenizer.encode(s) for s in sequences]
    lengths = [len(e) for e in encoded]
    ids = torch.as_tensor(np.concatenate(encoded))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    return ids, cu, max(lengths), encoded


def _embed(model, sequences):
    ids, cu, max_len, _ = _pack(model, sequences)
    with torch.inference_mode():
        return model.embed_packed(ids, cu, max_len)


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.fixture(scope="module")
def tiny():
    return load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=3), "cpu")


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(11)
    return [fx.random_dna(rng, n) for n in (1, 7, 60, 150, 333, 500, 24)]


# --- slopes and tokenizer -------------------------------------------------------------------


@pytest.mark.parametrize("heads", [4, 6, 12])
def test_alibi_slopes_match_written_out_values(heads):
    assert alibi_slopes(heads) == pytest.approx(fx.SLOPES[heads], rel=1e-12)


def test_tokenizer_applies_merges_adds_specials_and_ignores_file_padding(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(fx.tokenizer_json(with_padding=True))
    tok = DNABERTTokenizer.from_file(path)
    v = fx.tokenizer_vocab()
    ids = tok.encode("ACGTTTTTACNRG")
    assert ids.dtype == np.int64
    # [CLS] ACGT TTTT AC N [UNK](R) G [SEP]: no padding although the file asks for 64
    assert ids.tolist() == [1, v["ACGT"], v["TTTT"], v["AC"], v["N"], 0, v["G"], 2]
    assert tok.pad_id == 3


def test_tokenizer_matches_transformers_fast_tokenizer_and_pickles(tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "tokenizer.json"
    path.write_text(fx.tokenizer_json())
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    ours = pickle.loads(pickle.dumps(DNABERTTokenizer.from_file(path)))
    rng = np.random.default_rng(0)
    for seq in [fx.random_dna(rng, n) for n in (1, 5, 99, 500)] + ["NNNNACGT"]:
        expected = hf(seq, return_tensors="pt")["input_ids"][0].tolist()
        assert ours.encode(seq).tolist() == expected


def test_random_tokenizer_is_deterministic_and_dna_sized():
    a = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=0), "cpu").tokenizer
    b = pickle.loads(pickle.dumps(a))
    seq = fx.random_dna(np.random.default_rng(1), 500)
    ids = a.encode(seq)
    assert ids[0] == 1 and ids[-1] == 2 and ids.tolist() == b.encode(seq).tolist()
    assert 20 < len(ids) < 500  # BPE merges: fewer tokens than bases


# --- packed forward -------------------------------------------------------------------------


def test_packed_matches_padded_reference_on_mixed_lengths(tiny, sequences):
    packed = _embed(tiny, sequences)
    reference = tiny.embed_reference(sequences, batch_size=3)  # several padded batches
    assert packed.shape == (len(sequences), 64) and packed.dtype == torch.float32
    assert _cos(packed, reference).min().item() >= COS_MIN
    torch.testing.assert_close(packed, reference, atol=1e-4, rtol=1e-4)


def test_reference_backend_matches_kernel_backend(sequences):
    kernel = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=3), "cpu")
    ref = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=3, attention="reference"), "cpu")
    assert ref.backend == "reference" and kernel.backend == "sdpa"
    torch.testing.assert_close(_embed(kernel, sequences), _embed(ref, sequences), atol=1e-5, rtol=1e-5)


def test_no_cross_sequence_leakage(tiny, sequences):
    target = sequences[4]
    alone = _embed(tiny, [target])[0]
    rng = np.random.default_rng(5)
    neighbours = [fx.random_dna(rng, 400), fx.random_dna(rng, 30)]
    among = _embed(tiny, [neighbours[0], target, neighbours[1]])[1]
    changed = _embed(tiny, [fx.random_dna(rng, 480), target, "ACGT"])[1]
    torch.testing.assert_close(among, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(changed, alone, atol=1e-5, rtol=1e-5)
    # and the neighbours really are different sequences with different embeddings
    assert not torch.allclose(_embed(tiny, neighbours[:1])[0], alone, atol=1e-3)


def test_pool_is_mean_over_all_tokens_including_specials():
    hidden = torch.arange(24, dtype=torch.float16).reshape(6, 4)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    pooled = segment_mean(hidden, cu)
    expected = torch.stack([hidden[:2].float().mean(0), hidden[2:].float().mean(0)])
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_stays_close_to_fp32_reference(precision, sequences):
    low = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=3, precision=precision), "cpu")
    assert (
        low.bert.encoder.layer[0].mlp.wo.weight.dtype
        == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    )
    assert low.alibi_slopes.dtype == torch.float32
    fp32 = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=3), "cpu")
    cos = _cos(_embed(low, sequences[2:]), fp32.embed_reference(sequences[2:]))
    assert cos.min().item() > 0.99


# --- loader on checkpoints in the real layout ------------------------------------------------


@pytest.mark.parametrize(
    "fmt,prefix", [("safetensors", ""), ("safetensors", "bert."), ("bin", ""), ("bin", "bert.")]
)
def test_loader_round_trips_checkpoint_against_oracle(tmp_path, fmt, prefix):
    cfg = fx.config_dict()  # 6 heads: the non-power-of-two ALiBi slope rule
    state = fx.state_dict_for(cfg, seed=1)
    if prefix:  # masked-LM exports also carry the MLM head, which is not part of the encoder
        state["cls.predictions.bias"] = torch.zeros(cfg["vocab_size"])
    ckpt = fx.write_checkpoint(tmp_path / "ckpt", cfg, state, fmt=fmt, prefix=prefix)
    model = load_dnabert_s(EncoderConfig(str(ckpt)), "cpu")
    assert model.info.hidden_size == 48 and model.info.num_layers == 2
    rng = np.random.default_rng(2)
    seqs = [fx.random_dna(rng, n) for n in (3, 40, 17)] + ["ACGTTTTTACNNGGA"]
    packed = _embed(model, seqs)
    reference = model.embed_reference(seqs)
    for i, seq in enumerate(seqs):
        ids = model.tokenizer.encode(seq).tolist()
        expected = torch.from_numpy(fx.oracle_embedding(state, cfg, ids)).float()
        assert _cos(packed[i], expected).item() >= COS_MIN
        torch.testing.assert_close(packed[i], expected, atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(reference[i], expected, atol=2e-4, rtol=2e-4)


def _write(tmp_path, state, cfg=None, **kw):
    cfg = cfg or fx.config_dict()
    return fx.write_checkpoint(tmp_path / "ckpt", cfg, state, **kw)


def test_missing_key_is_reported(tmp_path):
    cfg = fx.config_dict()
    state = fx.state_dict_for(cfg)
    del state["encoder.layer.1.mlp.wo.bias"]
    with pytest.raises(ModelLoadError, match=r"missing 1 key.*encoder\.layer\.1\.mlp\.wo\.bias"):
        load_dnabert_s(EncoderConfig(str(_write(tmp_path, state))), "cpu")


def test_extra_key_is_reported(tmp_path):
    cfg = fx.config_dict()
    state = fx.state_dict_for(cfg)
    state["encoder.layer.0.attention.self.rotary.inv_freq"] = torch.ones(4)
    with pytest.raises(ModelLoadError, match=r"unexpected 1 key.*rotary\.inv_freq"):
        load_dnabert_s(EncoderConfig(str(_write(tmp_path, state, fmt="bin"))), "cpu")


def test_wrong_shape_is_reported(tmp_path):
    cfg = fx.config_dict()
    state = fx.state_dict_for(cfg)
    state["encoder.layer.0.mlp.gated_layers.weight"] = torch.zeros(80, 48)  # not 2 * intermediate
    with pytest.raises(ModelLoadError, match=r"wrong shape.*gated_layers"):
        load_dnabert_s(EncoderConfig(str(_write(tmp_path, state))), "cpu")


def test_pickle_with_disallowed_global_is_refused(tmp_path):
    cfg = fx.config_dict()
    state = fx.state_dict_for(cfg)
    ckpt = _write(tmp_path, state, fmt="bin")
    torch.save({**state, "payload": fx.Payload()}, ckpt / "pytorch_model.bin")
    fx.CALLS.clear()
    with pytest.raises(ModelLoadError, match="refused by the safe loader"):
        load_dnabert_s(EncoderConfig(str(ckpt)), "cpu")
    assert fx.CALLS == []


def test_bad_config_and_missing_files_are_reported(tmp_path):
    cfg = fx.config_dict()
    ckpt = _write(tmp_path, fx.state_dict_for(cfg))
    broken = dict(cfg)
    del broken["num_attention_heads"]
    (ckpt / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ModelLoadError, match="num_attention_heads"):
        load_dnabert_s(EncoderConfig(str(ckpt)), "cpu")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors or pytorch_model.bin"):
        load_dnabert_s(EncoderConfig(str(ckpt)), "cpu")


def test_uncached_hugging_face_id_says_what_to_do():
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        load_dnabert_s(EncoderConfig("virnucpro-test-owner/no-such-dnabert"), "cpu")


def test_cached_hugging_face_id_is_resolved_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cfg = fx.config_dict()
    state = fx.state_dict_for(cfg)
    repo = tmp_path / "hub" / "models--someone--tiny-dnabert"
    commit = "0" * 40
    fx.write_checkpoint(repo / "snapshots" / commit, cfg, state)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_dnabert_s(EncoderConfig("someone/tiny-dnabert"), "cpu")
    assert model.info.spec == "someone/tiny-dnabert" and model.info.hidden_size == 48


def test_unknown_random_name_is_reported():
    with pytest.raises(ModelLoadError, match="random:dnabert-s-tiny"):
        load_dnabert_s(EncoderConfig("random:dnabert-xl"), "cpu")


def test_config_fields_are_read_from_real_config():
    arch = DNABERTArch.from_config(
        fx.config_dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=4096)
    )
    assert arch == DNABERTArch()


def test_non_finite_embeddings_are_flagged_and_reported():
    from pipeline.core.errors import NumericalError

    model = load_dnabert_s(EncoderConfig("random:dnabert-s-tiny", seed=3), "cpu")
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    model.pool(torch.ones(5, 64), cu)
    model.check_finite("part 0")  # clean: no error, flag reset
    hidden = torch.ones(5, 64)
    hidden[3, 7] = float("nan")
    model.pool(torch.ones(5, 64), cu)
    model.pool(hidden, cu)
    with pytest.raises(NumericalError, match=r"part 1 .*first bad batch: 1 of 2"):
        model.check_finite("part 1")
    model.check_finite("part 2")  # the flag was reset by the previous check


def test_registry_loads_dnabert_through_the_shared_runner_entry():
    from pipeline.models.registry import load_encoder

    model = load_encoder(
        "dnabert-s", EncoderConfig("random:dnabert-s-tiny", compile=True), "cpu", disable_compile=True
    )
    assert model.info.kind == "dnabert-s" and model.info.hidden_size == 64
    from pipeline.models.dnabert_s.model import _out_and_mlp

    assert model._block is _out_and_mlp  # compile was switched off by the setting


def test_fp32_model_is_refused_the_half_only_flash_kernel(monkeypatch):
    # flash-attn computes in fp16/bf16 only: asking for it (or letting auto pick it) for an fp32 model
    # must fail at load time or fall back, not crash in the first forward. Resolution runs before
    # anything touches the device, so "cuda" needs no GPU here.
    from pipeline.core.errors import BackendUnavailableError
    from pipeline.models import attention

    monkeypatch.setattr(attention, "HAS_FLASH_ATTN", True)
    cfg = EncoderConfig("random:dnabert-s-tiny", precision="fp32", attention="flash-attn")
    with pytest.raises(BackendUnavailableError, match="fp16/bf16"):
        load_dnabert_s(cfg, "cuda")
    assert attention.resolve_backend("auto", "cuda", alibi=True, dtype=torch.float32) == "flex"
