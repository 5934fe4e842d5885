"""Provider adapters: how a request looks on each provider's wire. Pure, no I/O.

Dialect translation, one module per (client dialect, backend) pair, each with
``translate_request``, ``translate_response``, ``translate_error`` and a stream
translator: ``openai_anthropic`` (an OpenAI chat client, an Anthropic backend)
and ``anthropic_openai`` (a Messages client, an OpenAI chat backend); what they
share is in ``sse_events`` and ``translate_helpers``.
"""
