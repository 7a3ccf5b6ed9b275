"""The validation harness: v1-vs-v2 equivalence, the DuckDB metrics store, regression checks and the
HTML report. Submodules import their heavy dependencies (torch, duckdb, matplotlib) lazily."""
