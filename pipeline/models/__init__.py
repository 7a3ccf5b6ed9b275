"""Embedding models: one module per architecture, each exposing a packed forward."""
