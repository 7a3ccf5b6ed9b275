"""DNABERT-S: the packed MosaicBERT model (`model`), its BPE tokenizer (`tokenizer`) and checkpoint
loading (`checkpoint`)."""

from pipeline.models.dnabert_s.checkpoint import load_dnabert_s
from pipeline.models.dnabert_s.model import DNABERTArch, PackedDNABERTS
from pipeline.models.dnabert_s.tokenizer import DNABERTTokenizer

__all__ = ["DNABERTArch", "DNABERTTokenizer", "PackedDNABERTS", "load_dnabert_s"]
