"""``edgewise-agent``: the device daemon.

Every expected failure ends as one line on standard error naming what is wrong and what to do,
and a documented exit code: 0 done, 1 a runtime failure, 2 bad usage or input, 69
(EX_UNAVAILABLE) the agent extra is not installed, 78 (EX_CONFIG) a configuration the agent
cannot run with — systemd is told not to restart-loop on it —, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from agent.clihelp import (
    add_completion,
    add_top_flags,
    formatter_for,
    global_flags,
    print_completion,
    subparsers_action,
)
from agent.config import load_config
from agent.contract import ContractError
from agent.errors import AgentError, ConfigError, UsageError
from agent.logs import setup_logging
from agent.preflight import source_problems, startup_problems

EX_FAILURE = 1
EX_USAGE = 2
EX_CONFIG = 78  # sysexits.h: RestartPreventExitStatus=78 in the unit
EX_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
DEFAULT_CONFIG = Path("/etc/edgewise/agent.toml")
log = logging.getLogger("agent")


class _Parser(argparse.ArgumentParser):
    """argparse that reports misuse in one line (its usage block is what --help is for), shows
    each option's default in --help, and never guesses an option from a prefix: --conf must not
    quietly mean --config (nor, later, an option added after it), as in the compiler's CLI."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        formatter_for(kwargs)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs: Any) -> Any:
        # -v after the subcommand too (SUPPRESS keeps it from resetting a -v given before)
        kwargs.setdefault("action", subparsers_action(global_flags(_Parser)))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: {_one_line(message)} (see --help)\n")


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgewise-agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_top_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve models from the broker on the configured source")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the agent's TOML file")
    run.add_argument(
        "--max-results", type=_count(1), help="exit after this many results (tests, benchmarks)"
    )
    bench = sub.add_parser("bench", help="the agent's frame path against a bare loop")
    bench.add_argument("--package", type=Path, required=True, help="a package folder")
    bench.add_argument("--source", type=Path, required=True, help="a video file")
    bench.add_argument("--frames", type=_count(1), default=500, help="frames to time")
    bench.add_argument("--threads", type=_count(0), default=1, help="ONNX Runtime threads")
    bench.add_argument("--json", action="store_true", help="also print the figures as JSON")
    check = sub.add_parser(
        "check-config", help="validate the config and what it needs here (packages, port, source)"
    )
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the agent's TOML file")
    add_completion(sub, "edgewise-agent", lambda args: print_completion(_parser(), args.shell))
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _bench(args: argparse.Namespace) -> int:
    from agent.bench import print_table, run_bench

    report = run_bench(args.package, str(args.source), args.frames, args.threads)
    print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems = startup_problems(config) + source_problems(config)
    if problems:
        raise ConfigError(f"{args.config}: {'; '.join(problems)}")
    print(f"{args.config}: ok (device {config.device.id})")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems = startup_problems(config)
    if problems:
        raise ConfigError(f"{args.config}: {'; '.join(problems)}")
    from agent.daemon import Agent  # keep check-config light: no onnxruntime import

    try:
        agent = Agent(config, max_results=args.max_results, config_path=args.config)
    except ContractError as exc:  # e.g. a trusted key file that is missing or not Ed25519
        raise ConfigError(f"{args.config}: trust.public_keys: {exc}") from exc
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
    return agent.run()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "bench": _bench,
    "check-config": _check_config,
    "completion": lambda args: int(args.func(args)),
}


def _fail(code: int, message: str) -> int:
    print(f"edgewise-agent: {_one_line(message)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        return _fail(EX_CONFIG, f"config error: {exc}")
    except UsageError as exc:
        return _fail(EX_USAGE, f"{args.command}: {exc}")
    except AgentError as exc:
        return _fail(EX_FAILURE, f"error: {exc}")
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except Exception as exc:  # a bug: one line for the user, the traceback with -v
        log.debug("unexpected error", exc_info=True)
        return _fail(EX_FAILURE, f"unexpected {type(exc).__name__}: {exc} (-v shows where)")


if __name__ == "__main__":
    sys.exit(main())
