"""Re-export of the protocol-neutral stream model, which lives in `trioproxy.codec.stream`."""

from trioproxy.codec.stream import (
    Headers,
    RequestHead,
    ResponseFlag,
    ResponseHead,
    StreamInfo,
    get_header,
)

__all__ = ["Headers", "RequestHead", "ResponseFlag", "ResponseHead", "StreamInfo", "get_header"]
