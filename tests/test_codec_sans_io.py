"""Codecs are sans-IO: every module under trioproxy/codec imports without trio or socket.

STYLE.md principle 1. The import test runs in a fresh interpreter where a
meta-path finder refuses `trio` and `socket`; modules are discovered with
pkgutil, so codecs added later are covered without editing this file.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import trioproxy.codec

FORBIDDEN_AT_IMPORT = ("trio", "socket")
# Not even mentioned in a codec's source: these are I/O, clocks or entropy.
FORBIDDEN_IN_SOURCE = ("trio", "socket", "time", "random")

CODEC_DIR = Path(trioproxy.codec.__file__).parent


def codec_modules() -> list[str]:
    names = ["trioproxy.codec"]
    for info in pkgutil.walk_packages([str(CODEC_DIR)], prefix="trioproxy.codec."):
        names.append(info.name)
    return names


SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys

    FORBIDDEN = set(json.loads(sys.argv[1]))
    MODULES = json.loads(sys.argv[2])

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in FORBIDDEN:
                raise ImportError(f"{name} is forbidden in a sans-IO codec")
            return None

    already = sorted(m for m in sys.modules if m.partition(".")[0] in FORBIDDEN)
    assert not already, f"imported before the test began: {already}"
    sys.meta_path.insert(0, Refuse())
    for name in MODULES:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in FORBIDDEN)
    assert not leaked, leaked
    print(json.dumps(MODULES))
    """
)


def test_codecs_import_without_trio_or_socket() -> None:
    modules = codec_modules()
    assert "trioproxy.codec.access_log_format" in modules
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(FORBIDDEN_AT_IMPORT), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == modules


def test_the_refusing_finder_works() -> None:
    # Guard against a vacuous pass: a module that imports trio must fail.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            json.dumps(FORBIDDEN_AT_IMPORT),
            json.dumps(["trio"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "forbidden in a sans-IO codec" in result.stderr


def test_codec_sources_do_not_import_io_modules() -> None:
    for source in sorted(CODEC_DIR.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                assert top not in FORBIDDEN_IN_SOURCE, f"{source}:{node.lineno} imports {name}"
