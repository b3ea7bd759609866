"""The HTTP filter interface and the registry that maps config types to filters.

A filter is one module under `filters/http/` with one config class (a
subclass of `config.HttpFilterConfig`) and one `HttpFilter` subclass,
registered with `@http_filter(ConfigClass)`. The connection manager builds a
filter chain from the registry; there is no central if/elif over filter kinds.

Hooks are async and return an explicit `FilterStatus`:
- `CONTINUE`: go on to the next filter (and finally the router);
- `STOP`: the filter answered the request itself (it called
  `stream.local_reply(...)`), so nothing after it runs.
Response hooks run in reverse order and may edit the response head.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from trioproxy.config import HttpFilterConfig

if TYPE_CHECKING:
    from trioproxy.codec.stream import ResponseHead
    from trioproxy.http.conn_manager import ActiveStream

__all__ = ["HTTP_FILTERS", "FilterStatus", "HttpFilter", "http_filter"]


class FilterStatus(enum.Enum):
    CONTINUE = "continue"
    STOP = "stop"


class HttpFilter:
    """Base class; override the hooks you need. One instance per stream."""

    def __init__(self, config: Any) -> None:
        self.config = config

    async def on_request_headers(self, stream: ActiveStream) -> FilterStatus:
        return FilterStatus.CONTINUE

    async def on_response_headers(self, stream: ActiveStream, head: ResponseHead) -> FilterStatus:
        return FilterStatus.CONTINUE


HTTP_FILTERS: dict[type[HttpFilterConfig], Callable[[Any], HttpFilter]] = {}

F = TypeVar("F", bound=type[HttpFilter])


def http_filter(config_type: type[HttpFilterConfig]) -> Callable[[F], F]:
    """Register `cls` as the filter for configs of `config_type`."""

    def deco(cls: F) -> F:
        HTTP_FILTERS[config_type] = cls
        return cls

    return deco
