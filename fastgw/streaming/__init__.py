"""Server-sent events: scanning upstream streams and relaying them to clients."""
