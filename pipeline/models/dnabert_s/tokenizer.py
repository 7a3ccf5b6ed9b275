"""DNABERT-S tokenization: the Hugging Face fast tokenizer read from ``tokenizer.json``.

The original tool calls ``AutoTokenizer.from_pretrained(..., trust_remote_code=True)`` and then
``tokenizer(seq)["input_ids"]``: a byte-pair-encoding model wrapped by a post-processor that adds
``[CLS] ... [SEP]``, no truncation, no padding. `DNABERTTokenizer` runs the same ``tokenizer.json``
through the ``tokenizers`` library directly, so no remote code runs and the ids are identical.

For ``random:`` models, `random_bpe_tokenizer_json` trains a small deterministic BPE vocabulary
on seeded random DNA so that token lengths resemble the real model's (~100-130 tokens per 500 bp).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from pipeline.core.errors import ModelLoadError
from pipeline.models.base import Tokenizer

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


def _from_json_text(text: str, source: str):
    """Build a ``tokenizers.Tokenizer`` with padding and truncation switched off (as HF does per call)."""
    from tokenizers import Tokenizer as FastTokenizer

    try:
        backend = FastTokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ModelLoadError(
            f"{source} is not a valid Hugging Face tokenizer.json ({exc}); "
            "use the tokenizer.json shipped with the DNABERT-S checkpoint"
        ) from None
    # A tokenizer.json may carry padding/truncation settings; the original call
    # ``tokenizer(seq, return_tensors="pt")`` applies neither, so neither do we.
    backend.no_padding()
    backend.no_truncation()
    return backend


class DNABERTTokenizer(Tokenizer):
    """Picklable DNA -> ``(L,) int64`` token ids, ``[CLS]`` and ``[SEP]`` included.

    Only the JSON text travels through pickling; the fast tokenizer is rebuilt lazily in the
    receiving process (DataLoader workers).
    """

    parallel_batch = True  # tokenizers' encode_batch runs on a Rust thread pool

    def __init__(self, json_text: str, source: str = "tokenizer.json") -> None:
        self._json_text = json_text
        self._source = source
        self._backend = _from_json_text(json_text, source)
        vocab = self._backend.get_vocab(with_added_tokens=True)
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]") if t not in vocab]
        if missing:
            raise ModelLoadError(
                f"{source} has no {', '.join(missing)} token; a DNABERT-S tokenizer.json defines "
                "[UNK], [CLS], [SEP], [PAD] and [MASK]"
            )
        self._pad_id = int(vocab["[PAD]"])
        self.cls_id = int(vocab["[CLS]"])
        self.sep_id = int(vocab["[SEP]"])
        self.vocab_size = int(self._backend.get_vocab_size(with_added_tokens=True))
        self.max_id = int(max(vocab.values()))

    @classmethod
    def from_file(cls, path: str | Path) -> DNABERTTokenizer:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelLoadError(
                f"cannot read tokenizer file {path}: {exc.strerror}; "
                "a DNABERT-S directory needs tokenizer.json"
            ) from None
        return cls(text, source=str(path))

    def __getstate__(self) -> dict:
        return {"json_text": self._json_text, "source": self._source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["json_text"], state["source"])  # type: ignore[misc]

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def encode(self, sequence: str) -> np.ndarray:
        """``sequence`` (DNA string) -> ``(L,) int64`` ids as ``tokenizer(seq)["input_ids"]`` gives."""
        return np.asarray(self._backend.encode(sequence).ids, dtype=np.int64)

    def encode_batch(self, sequences: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._backend.encode_batch(list(sequences))]

    def to_json(self) -> str:
        """The tokenizer.json text (used to write checkpoint directories)."""
        return self._json_text


@functools.lru_cache(maxsize=4)
def random_bpe_tokenizer_json(
    vocab_size: int, seed: int = 0, n_sequences: int | None = None, length: int = 1000
) -> str:
    """Train a deterministic DNABERT-style BPE tokenizer on seeded random DNA; returns tokenizer.json text.

    Same specials and ids as DNABERT-2/-S (``[UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4``), the same
    ``[CLS] $A [SEP]`` post-processor. Cached per process. The corpus grows with the vocabulary
    (default ``max(200, vocab_size // 8)`` sequences): BPE training time grows with the corpus, and
    a larger corpus buys nothing for random weights (measured: 256 tokens on 2000 x 1 kbp took
    8.4 s, on 200 x 1 kbp 0.6 s; 4096 tokens on 500 x 1 kbp 2.5 s).
    """
    if n_sequences is None:
        n_sequences = max(200, vocab_size // 8)
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import models, pre_tokenizers, processors, trainers

    if vocab_size < len(SPECIAL_TOKENS) + 5:
        raise ModelLoadError(f"vocab_size={vocab_size} is too small for a DNA BPE tokenizer; use >= 10")
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    corpus = [letters[rng.integers(0, 4, length)].tobytes().decode("ascii") for _ in range(n_sequences)]
    backend = FastTokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list("ACGTN"),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)],
    )
    text = backend.to_str()
    vocab = json.loads(text)["model"]["vocab"]
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    return text
