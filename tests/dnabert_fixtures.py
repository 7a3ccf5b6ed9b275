"""Test helpers for DNABERT-S: a hand-written BPE tokenizer.json, checkpoint directories in the real
Hugging Face layout, and a plain per-sequence oracle of the MosaicBERT block math.

Everything here is written independently of `pipeline.models.dnabert_s`: key names, slopes and the
forward are spelled out from the DNABERT-2 / DNABERT-S remote code, not taken from the module.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

# --- tokenizer ------------------------------------------------------------------------------

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # ids 0..4 as in DNABERT-2/-S
LETTERS = ["A", "C", "G", "T", "N"]  # ids 5..9
MERGES = [("A", "C"), ("G", "T"), ("AC", "GT"), ("T", "T"), ("A", "A"), ("C", "C"), ("G", "G"),
          ("TT", "TT"), ("AA", "AA"), ("CC", "G"), ("G", "A"), ("T", "A"), ("C", "A")]


def tokenizer_vocab() -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + LETTERS)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    return vocab


def tokenizer_json(with_padding: bool = True) -> str:
    """A DNABERT-style tokenizer.json: BPE with explicit merges, [CLS] $A [SEP] post-processor.

    ``with_padding`` stores a fixed-length padding setting in the file (as some exports do); the
    original call ``tokenizer(seq)`` does not pad, so a correct loader must ignore it.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    vocab = tokenizer_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES), unk_token="[UNK]"))
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    if with_padding:
        tok.enable_padding(pad_id=3, pad_token="[PAD]", length=64)
    return tok.to_str()


# --- checkpoint -----------------------------------------------------------------------------

def config_dict(hidden: int = 48, layers: int = 2, heads: int = 6, intermediate: int = 80,
                vocab: int = 40) -> dict:
    """config.json with the fields (and extras) the published DNABERT-S config carries."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-2-117M",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel"},
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 2,
        "vocab_size": vocab,
    }


def state_dict_for(cfg: dict, seed: int = 0, with_pooler: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the checkpoint's key names (no prefix), shapes from ``cfg``."""
    gen = torch.Generator().manual_seed(seed)
    d, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]

    def rnd(*shape, scale=0.15):
        return torch.randn(*shape, generator=gen) * scale

    def ln(prefix):
        return {prefix + ".weight": 1.0 + rnd(d, scale=0.1), prefix + ".bias": rnd(d, scale=0.1)}

    sd = {"embeddings.word_embeddings.weight": rnd(vocab, d, scale=1.0),
          "embeddings.token_type_embeddings.weight": rnd(cfg["type_vocab_size"], d, scale=1.0)}
    sd.update(ln("embeddings.LayerNorm"))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        sd[p + "attention.self.Wqkv.weight"] = rnd(3 * d, d, scale=0.6 / math.sqrt(d) * 4)
        sd[p + "attention.self.Wqkv.bias"] = rnd(3 * d)
        sd[p + "attention.output.dense.weight"] = rnd(d, d)
        sd[p + "attention.output.dense.bias"] = rnd(d)
        sd.update(ln(p + "attention.output.LayerNorm"))
        sd[p + "mlp.gated_layers.weight"] = rnd(2 * inter, d)
        sd[p + "mlp.wo.weight"] = rnd(d, inter)
        sd[p + "mlp.wo.bias"] = rnd(d)
        sd.update(ln(p + "mlp.layernorm"))
    if with_pooler:
        sd["pooler.dense.weight"] = rnd(d, d)
        sd["pooler.dense.bias"] = rnd(d)
    return sd


def write_checkpoint(directory: Path, cfg: dict, state: dict[str, torch.Tensor], *, fmt: str = "safetensors",
                     prefix: str = "", tokenizer_text: str | None = None) -> Path:
    """Write config.json, tokenizer.json and weights (``model.safetensors`` or ``pytorch_model.bin``)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    (directory / "tokenizer.json").write_text(tokenizer_text or tokenizer_json())
    state = {(prefix + k if not k.startswith("cls.") else k): v.contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    elif fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        raise ValueError(fmt)
    return directory


CALLS: list[str] = []


def _record(value: str) -> str:
    CALLS.append(value)
    return value


class Payload:
    """Unpickling this calls `_record`: a global a safe loader must refuse."""

    def __reduce__(self):
        return (_record, ("unpickled",))


# --- oracle ---------------------------------------------------------------------------------

# ALiBi slopes written out: powers of two take 2**(-8(i+1)/n); 6 heads = the 4-head slopes then
# the 8-head slopes at even positions (2**-1, 2**-3); 12 heads likewise from 8 and 16.
SLOPES = {
    4: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8],
    6: [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3],
    12: [2 ** -1, 2 ** -2, 2 ** -3, 2 ** -4, 2 ** -5, 2 ** -6, 2 ** -7, 2 ** -8,
         2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5],
}


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)  # the exact (erf) GELU, not the tanh approximation
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def oracle_embedding(state: dict[str, torch.Tensor], cfg: dict, ids: list[int]) -> np.ndarray:
    """One sequence, float64 numpy, every step spelled out; mean over all tokens. Returns ``(D,)``."""
    w = {k: v.double().numpy() for k, v in state.items()}
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    dh, inter = d // heads, cfg["intermediate_size"]
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    slopes = SLOPES[heads]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = x @ w[p + "attention.self.Wqkv.weight"].T + w[p + "attention.self.Wqkv.bias"]
        q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
        ctx = np.zeros((n, d))
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
            for a in range(n):
                for b in range(n):
                    scores[a, b] -= slopes[h] * abs(a - b)
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx[:, cols] = probs @ v[:, cols]
        attn = ctx @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"]
        x = _layer_norm(attn + x, w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], eps)
        g = x @ w[p + "mlp.gated_layers.weight"].T
        h_ = _gelu(g[:, :inter]) * g[:, inter:]
        out = h_ @ w[p + "mlp.wo.weight"].T + w[p + "mlp.wo.bias"]
        x = _layer_norm(out + x, w[p + "mlp.layernorm.weight"], w[p + "mlp.layernorm.bias"], eps)
    return x.mean(0)


def random_dna(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list("ACGT"), length))
