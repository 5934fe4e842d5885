"""The HTTP/1.1 server: client connections, parsing, limits, flow control, shutdown."""
