"""The config graph (pure data; imports nothing else from trioproxy)."""

from trioproxy.config.graph import *  # noqa: F403
from trioproxy.config.graph import DEFAULT_ACCESS_LOG_FORMAT
from trioproxy.config.graph import __all__ as _graph_all

__all__ = ["DEFAULT_ACCESS_LOG_FORMAT", *_graph_all]
