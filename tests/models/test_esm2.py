"""Packed ESM-2 against fair-esm's own forward, input checks, pooling and NaN detection (CPU, 8M model)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.esm2 import pack, proteins

from pipeline.core.config import EncoderConfig
from pipeline.core.errors import BackendUnavailableError, InputError, ModelLoadError, NumericalError
from pipeline.models.esm2 import ESM2Tokenizer, PackedESM2, load_esm2

SPEC = "random:esm2_t6_8M_UR50D"


def fair_esm_mean(model: PackedESM2, seq: str) -> torch.Tensor:
    """fair-esm's forward on one unpadded sequence, mean over residues (the original tool's pooling)."""
    alphabet = model.esm.alphabet
    tokens = torch.tensor([[alphabet.cls_idx, *alphabet.encode(seq), alphabet.eos_idx]])
    rep = model.esm(tokens, repr_layers=[model.num_layers])["representations"][model.num_layers]
    return rep[0, 1 : len(seq) + 1].mean(0)


@pytest.fixture(scope="module")
def model() -> PackedESM2:
    torch.set_num_threads(2)
    return load_esm2(EncoderConfig(SPEC), "cpu")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():
        yield


def test_packed_matches_fair_esm_per_sequence(model):
    # one sequence much longer than the rest, a single residue, several short ones
    seqs = proteins([1022, 1, 2, 37, 166, 9])
    ids, cu, maxlen = pack(model, seqs)
    assert model.backend == "sdpa"
    pooled = model.embed_packed(ids, cu, maxlen)
    assert pooled.shape == (len(seqs), 320) and pooled.dtype == torch.float32
    want = torch.stack([fair_esm_mean(model, s) for s in seqs])
    cos = F.cosine_similarity(pooled.double(), want.double(), dim=-1)
    assert cos.min() >= 0.9999, cos
    torch.testing.assert_close(pooled, want, atol=1e-4, rtol=1e-4)


def test_batch_of_one_and_repeated_sequence(model):
    (seq,) = proteins([60], seed=3)
    ids, cu, maxlen = pack(model, [seq])
    single = model.embed_packed(ids, cu, maxlen)[0]
    torch.testing.assert_close(single, fair_esm_mean(model, seq), atol=1e-4, rtol=1e-4)
    # packed twice: positions restart, so both copies get the same embedding
    ids, cu, maxlen = pack(model, [seq, seq])
    twice = model.embed_packed(ids, cu, maxlen)
    torch.testing.assert_close(twice[0], twice[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(twice[0], single, atol=1e-5, rtol=1e-5)


def test_no_leakage_between_sequences(model):
    seqs = proteins([20, 45, 12, 30], seed=1)
    base = model.embed_packed(*pack(model, seqs))
    changed = list(seqs)
    changed[1] = proteins([80], seed=9)[0]
    out = model.embed_packed(*pack(model, changed))
    for i in (0, 2, 3):
        torch.testing.assert_close(out[i], base[i], atol=1e-5, rtol=1e-5)
    assert F.cosine_similarity(out[1], base[1], dim=0) < 0.9999


def test_reference_backend_returns_packed_hidden(model):
    ref = load_esm2(EncoderConfig(SPEC, attention="reference"), "cpu")
    assert ref.backend == "reference"
    seqs = proteins([15, 4, 28], seed=2)
    ids, cu, maxlen = pack(model, seqs)
    hidden = ref(ids, cu, maxlen)
    assert hidden.shape == (ids.numel(), 320)
    torch.testing.assert_close(hidden, model(ids, cu, maxlen), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        ref.embed_reference(seqs), model.embed_packed(ids, cu, maxlen), atol=1e-4, rtol=1e-4
    )


def test_bf16_close_to_fp32(model):
    low = load_esm2(EncoderConfig(SPEC, precision="bf16"), "cpu")
    seqs = proteins([25, 7], seed=4)
    got = low.embed_packed(*pack(low, seqs))
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got, model.embed_packed(*pack(model, seqs)), dim=-1).min() >= 0.999


# --- pooling -------------------------------------------------------------------------------------


def test_pool_is_residue_mean(model):
    # sequences of 3 and 1 residues: tokens BOS r r r EOS | BOS r EOS
    cu = torch.tensor([0, 5, 8], dtype=torch.int32)
    hidden = torch.full((8, 320), 1000.0)
    hidden[1:4] = torch.tensor([1.0, 2.0, 6.0])[:, None]
    hidden[6] = -2.0
    pooled = model.pool(hidden, cu)
    torch.testing.assert_close(pooled[0], torch.full((320,), 3.0))
    torch.testing.assert_close(pooled[1], torch.full((320,), -2.0))


def test_pool_caps_at_1024_residues_like_the_original(model):
    n = 1030
    cu = torch.tensor([0, n + 2], dtype=torch.int32)
    hidden = torch.zeros(n + 2, 4)
    hidden[1:1025] = 1.0  # the first 1024 residues
    hidden[1025:] = 50.0  # residues beyond 1024 and EOS
    torch.testing.assert_close(model.pool(hidden, cu)[0], torch.ones(4))


def test_nan_detected_at_check_not_before(model):
    model.check_finite("clean start")
    cu = torch.tensor([0, 4, 7], dtype=torch.int32)
    model.pool(torch.zeros(7, 320), cu)
    bad = torch.zeros(7, 320)
    bad[5, 3] = float("nan")
    model.pool(bad, cu)  # no exception yet: the flag lives on the device
    with pytest.raises(NumericalError, match=r"part 7 .*first bad batch: 1 of 2"):
        model.check_finite("part 7")
    model.check_finite("next part")  # the flag was reset


# --- input checks ---------------------------------------------------------------------------------


def test_empty_batch_is_an_input_error(model):
    with pytest.raises(InputError, match="empty batch"):
        model(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int32), 0)


@pytest.mark.parametrize(
    ("cu", "match"),
    [
        ([1, 4, 7], "start at 0"),
        ([0, 5, 4, 7], "strictly increasing"),
        ([0, 3, 3, 7], "strictly increasing"),
        ([0, 4, 6], "must equal the number of packed tokens"),
    ],
)
def test_bad_cu_seqlens(model, cu, match):
    ids = torch.tensor([0, 5, 6, 2, 0, 7, 2])
    with pytest.raises(InputError, match=match):
        model(ids, torch.tensor(cu, dtype=torch.int32), 7)


def test_cu_seqlens_dtype_and_max_seqlen(model):
    ids = torch.tensor([0, 5, 6, 2, 0, 7, 2])
    with pytest.raises(InputError, match="int32"):
        model(ids, torch.tensor([0, 4, 7]), 4)
    with pytest.raises(InputError, match="max_seqlen=3"):
        model(ids, torch.tensor([0, 4, 7], dtype=torch.int32), 3)
    with pytest.raises(InputError, match="int64"):
        model(ids.to(torch.int32), torch.tensor([0, 4, 7], dtype=torch.int32), 4)


# --- tokenizer ------------------------------------------------------------------------------------


def test_tokenizer_matches_fair_esm_alphabet():
    from esm.data import Alphabet

    alphabet = Alphabet.from_architecture("ESM-1b")
    tok = ESM2Tokenizer.from_alphabet(alphabet)
    seq = "MKVLAAGXBZUO"
    expected = [alphabet.cls_idx, *alphabet.encode(seq), alphabet.eos_idx]
    assert tok.encode(seq).tolist() == expected
    assert tok.encode(seq).dtype == np.int64
    assert tok.pad_id == alphabet.padding_idx == 1
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(seq).tolist() == expected


@pytest.mark.parametrize(
    ("seq", "match"),
    [("MK*L", r"'\*' at position 2"), ("mkl", "'m' at position 0"), ("", "empty"), ("MKé", "non-ASCII")],
)
def test_tokenizer_rejects_what_fair_esm_cannot_encode(seq, match):
    with pytest.raises(InputError, match=match):
        ESM2Tokenizer.default().encode(seq)


# --- configuration -----------------------------------------------------------------------------------


def test_unavailable_backend_fails_at_load():
    with pytest.raises(BackendUnavailableError, match="torch-varlen"):
        load_esm2(EncoderConfig(SPEC, attention="torch-varlen"), "cpu")


def test_info_comes_from_the_architecture(model):
    assert (model.info.hidden_size, model.info.num_layers, model.info.repr_layer) == (320, 6, 6)
    assert model.info.kind == "esm2" and model.info.spec == SPEC
    assert 7_000_000 < model.info.params < 9_000_000


def test_random_weights_are_seeded():
    a = load_esm2(EncoderConfig(SPEC, seed=1), "cpu").esm.embed_tokens.weight
    b = load_esm2(EncoderConfig(SPEC, seed=1), "cpu").esm.embed_tokens.weight
    c = load_esm2(EncoderConfig(SPEC, seed=2), "cpu").esm.embed_tokens.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_random_architecture():
    with pytest.raises(ModelLoadError, match="esm2_t6_8M_UR50D"):
        load_esm2(EncoderConfig("random:esm2_t99_1T"), "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_packed_close_to_fp32_reference(precision):
    seqs = proteins([300, 1, 45, 166, 3], seed=5)
    reference = load_esm2(EncoderConfig(SPEC, precision="fp32"), "cuda").embed_reference(seqs)
    low = load_esm2(EncoderConfig(SPEC, precision=precision), "cuda")
    got = low.embed_packed(*pack(low, seqs))
    low.check_finite("gpu test")
    goal = 0.9999 if precision == "fp16" else 0.999
    assert F.cosine_similarity(got.double(), reference.double(), dim=-1).min() >= goal
