"""VirNucPro production pipeline: prepare, pack, embed, classify, merge."""

__version__ = "0.1.0"
