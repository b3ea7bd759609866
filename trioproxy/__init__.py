"""trioproxy: an Envoy-class L4/L7 proxy on Trio, configured in typed Python."""

__version__ = "0.1.0"
__all__ = ["__version__"]
