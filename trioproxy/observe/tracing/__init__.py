"""Tracing (Envoy's HCM `tracing`): trace-context headers (`context`), spans
and their Zipkin v2 / OTLP JSON encodings (`span`, `encode`) are pure; the
tracer (`tracer`: sampling, span lifecycle) and the batching exporter
(`exporter`: the one I/O task) are the runtime part."""
