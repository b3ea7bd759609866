"""Envoy's runtime: layered keys for feature flags and percentages.

Two layers, later overriding earlier (Envoy's layered runtime):

    static_layer   from the mesh (`runtime({...})` in the DSL)
    admin          from `POST /runtime_modify?k=v` (an empty value removes k)

Readers ask at the moment of use (`get_integer`, `feature_enabled`,
`fraction_enabled`), so a change through the admin layer takes effect on
the next request, without a restart. A lookup is two dict reads; nothing
is parsed per request (values are parsed when a layer is set).

This module is sans-IO: the random source is passed in.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from trioproxy.config import RuntimeValue

__all__ = ["ADMIN_LAYER", "STATIC_LAYER", "Runtime", "parse_runtime_value"]

STATIC_LAYER = "static_layer"
ADMIN_LAYER = "admin"

# Envoy's FractionalPercent denominators.
DENOMINATORS = (100, 10_000, 1_000_000)


def parse_runtime_value(text: str) -> RuntimeValue:
    """An admin-layer value from its text: `true`/`false`, an integer, a
    number, else the string (Envoy's runtime parses values the same way)."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _text(v: RuntimeValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class Runtime:
    """The runtime snapshot readers consult; the admin layer is mutable."""

    def __init__(
        self,
        static: Iterable[tuple[str, RuntimeValue]] = (),
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._static: dict[str, RuntimeValue] = dict(static)
        self._admin: dict[str, RuntimeValue] = {}
        self._merged: dict[str, RuntimeValue] = dict(self._static)
        self._rng = rng or random.Random()

    # ------------------------------------------------------------------ reads

    def get(self, key: str) -> RuntimeValue | None:
        return self._merged.get(key)

    def get_integer(self, key: str, default: int) -> int:
        """The key as an integer (a float is truncated); `default` if unset
        or not a number."""
        v = self._merged.get(key)
        if isinstance(v, bool) or v is None:
            return default
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return int(v)
        return default

    def get_bool(self, key: str, default: bool) -> bool:
        v = self._merged.get(key)
        return v if isinstance(v, bool) else default

    def feature_enabled(self, key: str, default_percent: float) -> bool:
        """True for `percent`% of calls: the key's value (0..100) if it is
        a number, else `default_percent` (Envoy's `featureEnabled`)."""
        v = self._merged.get(key)
        percent = v if isinstance(v, int | float) and not isinstance(v, bool) else default_percent
        if percent <= 0:
            return False
        if percent >= 100:
            return True
        return self._rng.random() * 100 < percent

    def fraction_enabled(self, key: str, numerator: int, denominator: int = 100) -> bool:
        """Envoy's runtime_fraction: True for `numerator/denominator` of calls,
        where an integer value under `key` replaces the numerator."""
        if key:
            v = self._merged.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                numerator = v
        if numerator <= 0:
            return False
        if numerator >= denominator:
            return True
        return self._rng.randrange(denominator) < numerator

    # ------------------------------------------------------------------ admin layer

    def modify(self, updates: Mapping[str, str]) -> None:
        """Set admin-layer keys from text; an empty value removes the key."""
        for key, text in updates.items():
            if text == "":
                self._admin.pop(key, None)
            else:
                self._admin[key] = parse_runtime_value(text)
        self._merged = {**self._static, **self._admin}

    def dump(self) -> dict[str, object]:
        """Envoy's `/runtime` JSON: the layers in order, and for each key the
        final value and its value in every layer ("" where it is absent)."""
        layers = ((STATIC_LAYER, self._static), (ADMIN_LAYER, self._admin))
        entries = {
            key: {
                "final_value": _text(value),
                "layer_values": [_text(layer[key]) if key in layer else "" for _, layer in layers],
            }
            for key, value in sorted(self._merged.items())
        }
        return {"layers": [name for name, _ in layers], "entries": entries}
