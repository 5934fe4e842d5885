"""Provider adapters: how a request looks on each provider's wire. Pure, no I/O."""
