"""Command line: argv -> Config -> app. No logic beyond choosing what to run."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from fastgw.config import Config, load_config
from fastgw.errors import ConfigError, NativeModuleMissing, StateDirError


def build_parser() -> argparse.ArgumentParser:
    from fastgw.mock import add_arguments as add_mock_arguments

    parser = argparse.ArgumentParser(prog="fastgw", description="A fast OpenAI-compatible AI "
                                     "gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (the built-in demo without --config)")
    serve.add_argument("--config", help="YAML configuration file")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (overrides server.workers)")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")
    mock = sub.add_parser("mock-upstream", help="run a fake OpenAI/Anthropic upstream")
    add_mock_arguments(mock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "mock-upstream":
        from fastgw.mock import options_from_args, run_mock

        run_mock(options_from_args(args), args.host, args.port)
        return 0
    return serve(args)


def check_config(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for where, message in exc.errors:
            print(f"  {where}: {message}" if where else f"  {message}", file=sys.stderr)
        return 1
    print(f"{path}: OK, {cfg.summary()}")
    return 0


def serve(args: argparse.Namespace) -> int:
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"fastgw: invalid configuration {args.config}:", file=sys.stderr)
            for where, message in exc.errors:
                print(f"  {where}: {message}" if where else f"  {message}", file=sys.stderr)
            return 1
    else:
        cfg = Config(demo=True)
    s = cfg.server
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(
        s, host=args.host or s.host, port=args.port if args.port is not None else s.port,
        workers=args.workers if args.workers is not None else s.workers))
    if cfg.server.workers < 1:
        print("fastgw: --workers must be at least 1", file=sys.stderr)
        return 1
    state = None
    try:
        if cfg.server.state_dir is not None and cfg.limits_backend == "local":
            from fastgw.limits.state import LimitState

            state = LimitState(cfg.server.state_dir)
            state.use()
        if cfg.server.workers > 1:
            from fastgw.supervisor import supervise

            return supervise(cfg, state)
        from fastgw.app import run_worker

        if state is not None:
            state.start_flusher(cfg.server.state_flush_s)
        return run_worker(cfg)
    except NativeModuleMissing as exc:
        print(f"fastgw: {exc}", file=sys.stderr)
        return 2
    except StateDirError as exc:
        print(f"fastgw: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fastgw: cannot listen on {cfg.server.host}:{cfg.server.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if state is not None:
            state.close()


if __name__ == "__main__":
    os._exit(main())
