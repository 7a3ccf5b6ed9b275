"""ESM-2: the packed model (`model`), its alphabet (`tokenizer`) and checkpoint loading (`checkpoint`)."""

from pipeline.models.esm2.checkpoint import ESM2_ARCHS, ESM2Arch, load_esm2
from pipeline.models.esm2.model import PackedESM2
from pipeline.models.esm2.tokenizer import ESM2Tokenizer

__all__ = ["ESM2_ARCHS", "ESM2Arch", "ESM2Tokenizer", "PackedESM2", "load_esm2"]
