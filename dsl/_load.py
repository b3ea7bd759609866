"""`load_mesh`: import a mesh file and compile what it defines.

A mesh file is a Python module defining `MESH` (a `mesh(...)` builder or an
already compiled `Mesh`) or a `build()` function returning one. Every way
this can fail - a missing file, a syntax error, an exception while
importing, no `MESH` - becomes a `MeshError` with the user's `file:line`,
so `trioproxy validate` and reload report all failures the same way.

Each load imports the file as a fresh module under a unique name, and
re-imports the sibling modules that the previous load of the same file
imported, so a reload sees edits to helper modules too.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import itertools
import os
import re
import sys
import traceback
from collections.abc import Iterator
from types import CodeType, ModuleType

import attrs

from trioproxy.config import Location, Mesh

from ._builders import MeshBuilder
from ._errors import MeshError, MeshIssue

__all__ = ["load_mesh"]

_counter = itertools.count()
# mesh file (absolute path) -> modules its last successful load imported. They
# stay in sys.modules so that the compiled graph pickles (user filter classes
# are pickled by reference) and are dropped when the same file loads again.
_loaded: dict[str, set[str]] = {}


def _fail(location: Location | None, message: str) -> MeshError:
    return MeshError([MeshIssue(location=location, message=message)])


def load_mesh(path: str | os.PathLike[str]) -> Mesh:
    """Import the mesh file at `path` and compile it (with `source=str(path)`).

    The file's directory is put first on `sys.path` while it runs, so it can
    import sibling modules.

    Raises:
        MeshError: the file is missing, does not import, defines neither
            `MESH` nor `build()`, or its mesh does not compile.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise _fail(None, f"mesh file not found: {source}")
    directory = os.path.dirname(os.path.abspath(source))
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(source))[0])
    module_name = f"_trioproxy_mesh_{next(_counter)}_{stem}"
    module = ModuleType(module_name)
    module.__file__ = source

    for name in _loaded.pop(os.path.abspath(source), ()):
        sys.modules.pop(name, None)  # the previous load's modules: import them afresh
    importlib.invalidate_caches()  # sibling modules created since the last import
    modules_before = set(sys.modules)
    sys.path.insert(0, directory)
    sys.modules[module_name] = module  # dataclasses and pickle look classes up here
    ok = False
    try:
        value = _run(module, source, directory)
        ok = True
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)
        mine = _user_modules(set(sys.modules) - modules_before, directory)
        mine.add(module_name)
        if ok:
            _loaded[os.path.abspath(source)] = mine
        else:
            for name in mine:
                sys.modules.pop(name, None)

    if isinstance(value, Mesh):
        return attrs.evolve(value, source=source)
    return value.compile(source=source)


def _run(module: ModuleType, source: str, directory: str) -> MeshBuilder | Mesh:
    """Execute the module, then read `MESH` or call `build()`."""
    with _user_errors(directory):
        # Compiled here rather than through the import system: no stale .pyc
        # when a file is edited twice within a second, and any file name works.
        with open(source, "rb") as f:
            code = compile(f.read(), source, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    value = getattr(module, "MESH", None)
    if value is None:
        build = getattr(module, "build", None)
        if build is None:
            raise _fail(
                Location(file=source, line=1),
                "mesh file defines neither MESH nor build()",
            )
        if not callable(build):
            raise _fail(
                Location(file=source, line=_assignment_line(source, "build")),
                f"build must be a function, got {type(build).__name__}",
            )
        with _user_errors(directory):
            value = build()
        func_code = getattr(build, "__code__", None)
        line = func_code.co_firstlineno if isinstance(func_code, CodeType) else 1
        where = Location(file=source, line=line)
        origin = "build()"
    else:
        where = Location(file=source, line=_assignment_line(source, "MESH"))
        origin = "MESH"
    if not isinstance(value, MeshBuilder | Mesh):
        raise _fail(where, f"{origin} must be a mesh(...), got {type(value).__name__}")
    return value


@contextlib.contextmanager
def _user_errors(directory: str) -> Iterator[None]:
    """Turn an exception raised by user code into a located MeshError.

    The location is the deepest traceback frame in a file under the mesh
    file's directory (the mesh file or one of its sibling modules).
    """
    try:
        yield
    except MeshError:
        raise  # from a compile inside the file: already located
    except SyntaxError as exc:
        location = None
        if exc.filename is not None and exc.lineno is not None:
            location = Location(file=exc.filename, line=exc.lineno)
        raise _fail(location, f"{type(exc).__name__}: {exc.msg}") from exc
    except (Exception, SystemExit) as exc:
        prefix = directory + os.sep
        location = None
        for frame in traceback.extract_tb(exc.__traceback__):
            if os.path.abspath(frame.filename).startswith(prefix) and frame.lineno is not None:
                location = Location(file=frame.filename, line=frame.lineno)
        text = str(exc)
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise _fail(location, message) from exc


def _assignment_line(source: str, name: str) -> int:
    """The line of the last top-level assignment to (or def of) `name`, else 1."""
    try:
        with open(source, encoding="utf-8") as f:
            tree = ast.parse(f.read(), source)
    except (OSError, SyntaxError, ValueError):  # pragma: no cover - it just imported
        return 1
    line = 1
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            line = node.lineno
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            line = node.lineno
    return line


def _user_modules(names: set[str], directory: str) -> set[str]:
    """The modules among `names` that were imported from the mesh file's directory.

    A module counts as the user's if the directory is where its top-level
    package was found: its file is `<directory>/<top>.py` or under
    `<directory>/<top>/`.
    """
    prefix = directory + os.sep
    mine: set[str] = set()
    for name in names:
        top = name.partition(".")[0]
        filename = getattr(sys.modules.get(name), "__file__", None) or ""
        if top == "trioproxy" or not filename.startswith(prefix):
            continue
        first = filename[len(prefix) :].split(os.sep, 1)[0]
        if first in (top, f"{top}.py"):
            mine.add(name)
    return mine
