"""The upstream HTTP/1.1 client: connections, pools, one exchange at a time."""
