"""Fuzz targets (run with `pytest fuzz/` or `nox -s fuzz`; not part of `tests/`)."""
