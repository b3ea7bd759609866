"""Shared set-up for the fuzz targets.

- The example budget comes from `TRIOPROXY_FUZZ_EXAMPLES` (default 200 per
  target), so `nox -s fuzz` can run them with a bounded budget in CI and a
  developer can run a long campaign locally.
- The repository root is put on `sys.path`, so the targets can use the test
  helpers (`tests.memnet`) however pytest is started.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_EXAMPLES = 200


def fuzz_examples() -> int:
    """The per-target example budget (`TRIOPROXY_FUZZ_EXAMPLES`)."""
    raw = os.environ.get("TRIOPROXY_FUZZ_EXAMPLES", "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_EXAMPLES
    except ValueError:
        raise pytest.UsageError(
            f"TRIOPROXY_FUZZ_EXAMPLES must be an integer, not {raw!r}"
        ) from None


def pytest_report_header(config: pytest.Config) -> str:
    return f"trioproxy fuzz: {fuzz_examples()} examples per target (TRIOPROXY_FUZZ_EXAMPLES)"
