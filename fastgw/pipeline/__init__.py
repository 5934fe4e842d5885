"""The request pipeline: routing snapshot, phases, the handler the server calls."""
