"""The full-size random DNABERT-S: real architecture, 4096-token BPE vocabulary, on CPU."""

from __future__ import annotations

import fixtures.dnabert as fx
import numpy as np
import pytest
import torch

from pipeline.core.config import EncoderConfig
from pipeline.models.dnabert_s import load_dnabert_s


@pytest.mark.slow
def test_random_full_size_has_the_117m_architecture_and_realistic_tokens():
    torch.set_num_threads(1)
    model = load_dnabert_s(EncoderConfig("random:dnabert-s", seed=0), "cpu")
    d, inter, layers, vocab = 768, 3072, 12, 4096
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 2 * inter) + (inter * d + d) + 2 * d
    assert model.info.params == vocab * d + 2 * d + 2 * d + layers * per_layer  # pooler excluded
    assert (model.info.num_layers, model.info.hidden_size, model.alibi_slopes.numel()) == (12, 768, 12)
    assert model.tokenizer.vocab_size == 4096

    rng = np.random.default_rng(0)
    lengths = [len(model.tokenizer.encode(fx.random_dna(rng, 500))) for _ in range(20)]
    assert 60 < np.mean(lengths) < 200  # BPE tokens of a 500 bp chunk, [CLS]/[SEP] included

    seqs = [fx.random_dna(rng, 40), fx.random_dna(rng, 90)]
    enc = [model.tokenizer.encode(s) for s in seqs]
    ids = torch.as_tensor(np.concatenate(enc))
    cu = torch.tensor([0, len(enc[0]), len(enc[0]) + len(enc[1])], dtype=torch.int32)
    with torch.inference_mode():
        packed = model.embed_packed(ids, cu, max(len(e) for e in enc))
    ref = model.embed_reference(seqs)
    assert torch.nn.functional.cosine_similarity(packed, ref).min().item() >= 0.9999
