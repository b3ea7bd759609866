"""Compile errors (`MeshIssue`, `MeshError`) and where a builder call came from.

`caller_location()` is called by every builder function and method: it walks
the stack to the first frame outside the DSL and recipe packages, so an issue
points at the line of the user's mesh file, not at DSL internals, and a node
made by a recipe points at the user's call to the recipe.

Nothing here validates values; that is `_compile`'s job.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from types import FrameType

import attrs

from trioproxy.config import Location

__all__ = ["MeshError", "MeshIssue", "caller_location"]


def _authoring_dirs() -> tuple[str, ...]:
    """Directories whose frames `caller_location` skips: `dsl/` and `recipes/`."""
    dsl_dir = os.path.dirname(os.path.abspath(__file__))
    dirs = {dsl_dir, os.path.join(os.path.dirname(dsl_dir), "recipes")}
    try:
        # In an editable install `trioproxy.recipes` may live anywhere; ask the
        # import system. This imports the `trioproxy` package, never recipes.
        spec = importlib.util.find_spec("trioproxy.recipes")
    except (ImportError, ValueError):  # pragma: no cover - defensive
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs.update(os.path.abspath(p) for p in spec.submodule_search_locations)
    return tuple(sorted(d + os.sep for d in dirs))


_SKIP_PREFIXES = _authoring_dirs()


def caller_location() -> Location | None:
    """The `file:line` of the innermost caller outside `dsl/` and `recipes/`."""
    frame: FrameType | None = sys._getframe(1)
    skip = _SKIP_PREFIXES
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(skip):
            return Location(file=filename, line=frame.f_lineno)
        frame = frame.f_back
    return None


@attrs.frozen(kw_only=True)
class MeshIssue:
    """One problem found in a mesh, with the user's `file:line` that caused it."""

    location: Location | None
    message: str

    def __str__(self) -> str:
        if self.location is None:
            return self.message
        return f"{self.location}: {self.message}"


class MeshError(Exception):
    """A mesh could not be loaded or compiled.

    `issues` lists every problem found, in source order; `str()` gives one
    `file:line: message` line per issue.
    """

    issues: list[MeshIssue]

    def __init__(self, issues: Iterable[MeshIssue]) -> None:
        ordered = _in_source_order(issues)
        super().__init__(tuple(ordered))
        self.issues = ordered

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def _in_source_order(issues: Iterable[MeshIssue]) -> list[MeshIssue]:
    """Issues sorted by line within each file; files in order of first mention.

    Issues without a location come first. The sort is stable, so issues on
    one line keep the order in which the compiler found them.
    """
    listed = list(issues)
    file_rank: dict[str, int] = {}
    for issue in listed:
        if issue.location is not None:
            file_rank.setdefault(issue.location.file, len(file_rank))

    def key(issue: MeshIssue) -> tuple[int, int]:
        if issue.location is None:
            return (-1, 0)
        return (file_rank[issue.location.file], issue.location.line)

    return sorted(listed, key=key)
