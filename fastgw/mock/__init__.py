"""A fast fake OpenAI- and Anthropic-compatible upstream (``fastgw mock-upstream``).

For demos, tests and benchmarks; see :mod:`fastgw.mock.upstream` for the
endpoints, the options and the per-request fault injection headers.
"""

from fastgw.mock.upstream import (
    MockOptions,
    Stats,
    add_arguments,
    options_from_args,
    run_mock,
    start_mock,
)

__all__ = [
    "MockOptions",
    "Stats",
    "add_arguments",
    "options_from_args",
    "run_mock",
    "start_mock",
]
