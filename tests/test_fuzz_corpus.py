"""Replay the fuzz corpus: every fuzz target's saved failing examples
(`fuzz/corpus/`) and its `@example`s, without generating new inputs.

`nox -s fuzz` saves each failing example to `fuzz/corpus/` (a Hypothesis
`DirectoryBasedExampleDatabase`, committed to git); this module runs every
target in `fuzz/` with `phases=[Phase.explicit, Phase.reuse]` against that
database, read-only, so a failure found once keeps failing the regular test
run until it is fixed. It takes seconds.
"""

from __future__ import annotations

import importlib
import unittest
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis.database import ReadOnlyDatabase

# Importing fuzz.conftest also points `trioproxy.dsl` at this checkout.
from fuzz.conftest import CORPUS, CORPUS_DIR

FUZZ_DIR = CORPUS_DIR.parent


def _targets() -> Iterator[tuple[str, Callable[..., Any]]]:
    for path in sorted(FUZZ_DIR.glob("test_*.py")):
        module = importlib.import_module(f"fuzz.{path.stem}")
        for name in sorted(dir(module)):
            fn = getattr(module, name)
            if name.startswith("test_") and hasattr(fn, "hypothesis"):
                yield f"{path.stem}::{name}", fn


TARGETS = dict(_targets())


def test_every_fuzz_module_has_targets() -> None:
    modules = {name.split("::")[0] for name in TARGETS}
    assert modules == {p.stem for p in FUZZ_DIR.glob("test_*.py")}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_replay(name: str) -> None:
    target = TARGETS[name]
    # The target's own settings (set by its @settings decorator), with only
    # the explicit and saved examples, and the corpus opened read-only.
    original = target._hypothesis_internal_use_settings  # type: ignore[attr-defined]
    target._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
        original, phases=[Phase.explicit, Phase.reuse], database=ReadOnlyDatabase(CORPUS)
    )
    try:
        target()
    except unittest.SkipTest:
        # Hypothesis skips a test with nothing to run; a target without an
        # @example would then replay nothing, silently.
        pytest.fail(f"{name} has no @example and no saved corpus entry; give it an @example")
    finally:
        target._hypothesis_internal_use_settings = original  # type: ignore[attr-defined]
