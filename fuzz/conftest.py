"""Shared set-up for the fuzz targets.

- The example budget comes from `TRIOPROXY_FUZZ_EXAMPLES` (default 200 per
  target), so `nox -s fuzz` can run them with a bounded budget in CI and a
  developer can run a long campaign locally.
- `TRIOPROXY_FUZZ_SECONDS` caps each target's wall time (unset: no cap). Past
  the cap a target's remaining examples return at once (see `time_capped`).
- Failing examples are saved to `fuzz/corpus/` (a Hypothesis
  `DirectoryBasedExampleDatabase`, committed to git), and
  `tests/test_fuzz_corpus.py` replays them in the regular test run.
- The repository root is put on `sys.path`, so the targets can use the test
  helpers (`tests.memnet`) however pytest is started.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _dsl_from_this_checkout() -> None:
    """Import `trioproxy.dsl` from this checkout's `dsl/`.

    An editable install maps `trioproxy.dsl` to the directory it was made
    from; in another worktree of the repository (PYTHONPATH pointing at it)
    that would be the other tree's DSL. No-op when they are the same.
    """
    if "trioproxy.dsl" in sys.modules:
        return
    spec = importlib.util.find_spec("trioproxy.dsl")
    here = ROOT / "dsl"
    if spec is None or spec.origin is None or pathlib.Path(spec.origin).parent == here:
        return
    spec = importlib.util.spec_from_file_location(
        "trioproxy.dsl", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["trioproxy.dsl"] = module
    spec.loader.exec_module(module)


_dsl_from_this_checkout()

DEFAULT_EXAMPLES = 200
CORPUS_DIR = pathlib.Path(__file__).resolve().parent / "corpus"
CORPUS = DirectoryBasedExampleDatabase(CORPUS_DIR)

F = TypeVar("F", bound=Callable[..., Any])


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "")
    try:
        return max(1, int(raw)) if raw else default
    except ValueError:
        raise pytest.UsageError(f"{name} must be an integer, not {raw!r}") from None


def fuzz_examples(scale: int = 1) -> int:
    """The per-target example budget (`TRIOPROXY_FUZZ_EXAMPLES`), times `scale`
    for targets whose examples are cheap (no proxy per example)."""
    examples = _env_int("TRIOPROXY_FUZZ_EXAMPLES", DEFAULT_EXAMPLES)
    assert examples is not None
    return examples * scale


def fuzz_seconds() -> int | None:
    """The per-target wall-time cap (`TRIOPROXY_FUZZ_SECONDS`), or None."""
    return _env_int("TRIOPROXY_FUZZ_SECONDS", None)


def fuzz_settings(scale: int = 1) -> settings:
    """Settings for a fuzz target: the budget, no deadline (the machine is
    shared; virtual time bounds the proxy), the corpus database."""
    return settings(
        max_examples=fuzz_examples(scale),
        deadline=None,
        database=CORPUS,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def time_capped(fn: F) -> F:
    """Run `fn` (a target's body, under `@given`) until the target has used
    `TRIOPROXY_FUZZ_SECONDS` of wall time; later examples return at once.

    Once an example has failed the cap is lifted, so Hypothesis can shrink
    and replay the failure without seeing it pass.
    """
    cap = fuzz_seconds()
    state: dict[str, float | bool | None] = {"start": None, "failed": False}

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        start = state["start"]
        if start is None:
            state["start"] = start = now
        if cap is not None and not state["failed"] and now - float(start) > cap:
            return None
        try:
            return fn(*args, **kwargs)
        except BaseException:
            state["failed"] = True
            raise

    return inner  # type: ignore[return-value]


def pytest_report_header(config: pytest.Config) -> str:
    cap = fuzz_seconds()
    return (
        f"trioproxy fuzz: {fuzz_examples()} examples per target (TRIOPROXY_FUZZ_EXAMPLES), "
        f"time cap {f'{cap} s' if cap else 'none'} (TRIOPROXY_FUZZ_SECONDS), corpus {CORPUS_DIR}"
    )
