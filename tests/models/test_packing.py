"""The one pack helper: flat tokens, cumulative starts and the longest row, checked against an
independent padded-and-masked construction and against a per-sequence forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from pipeline.core.config import EncoderConfig
from pipeline.models.packing import cumulative_lengths, pack


def _rows(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 30, n).astype(np.int32) for n in lengths]


@pytest.mark.parametrize("lengths", [[5, 1, 9, 3], [7], [2, 2, 2]])
def test_pack_matches_the_padded_mask(lengths):
    rows = _rows(lengths)
    ids, cu, max_seqlen = pack(rows)
    assert ids.dtype == torch.int64 and ids.shape == (sum(lengths),)
    assert cu.dtype == torch.int32 and cu.shape == (len(lengths) + 1,)
    assert max_seqlen == max(lengths)
    # flash-attention's unpad_input, written out: pad, mask, keep the real positions row by row
    padded = pad_sequence([torch.from_numpy(r).long() for r in rows], batch_first=True, padding_value=-1)
    mask = padded != -1
    assert torch.equal(ids, padded[mask])
    want_cu = torch.nn.functional.pad(torch.cumsum(mask.sum(1), 0, dtype=torch.int32), (1, 0))
    assert torch.equal(cu, want_cu)
    for b, r in enumerate(rows):  # row b is input_ids[cu[b]:cu[b+1]]
        assert ids[cu[b] : cu[b + 1]].tolist() == r.tolist()


def test_pack_accepts_lists_and_tensors_and_nothing():
    ids, cu, m = pack([[1, 2], torch.tensor([3]), np.array([4, 5, 6])])
    assert ids.tolist() == [1, 2, 3, 4, 5, 6] and cu.tolist() == [0, 2, 3, 6] and m == 3
    ids, cu, m = pack([])
    assert ids.shape == (0,) and cu.tolist() == [0] and m == 0


def test_cumulative_lengths():
    out = cumulative_lengths([3, 0, 4])
    assert out.dtype == np.int64 and out.tolist() == [0, 3, 3, 7]
    assert cumulative_lengths([]).tolist() == [0]


def test_packed_forward_equals_one_sequence_at_a_time():
    from pipeline.models.esm2 import load_esm2

    model = load_esm2(EncoderConfig("random:esm2_t6_8M_UR50D"), "cpu")
    rows = [model.tokenizer.encode(s) for s in ("MKV", "ACDEFGHIKLMNPQ", "W")]
    with torch.inference_mode():
        together = model.embed_packed(*pack(rows))
        alone = torch.cat([model.embed_packed(*pack([r])) for r in rows])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
