"""Support code shared by the tests and the benchmarks (bench/): real processes and fixtures' helpers, never
shipped with the product. Import it as `tests.support.<module>` from the repository root (pytest's pythonpath;
`python -m bench.<name>.run` for a benchmark)."""
