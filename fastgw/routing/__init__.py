"""Routing: balancing over targets, target health, retry budget, provider quotas."""
