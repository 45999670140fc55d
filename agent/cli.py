"""``edgewise-agent``: the device daemon."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .config import load_config
from .contract import ContractError
from .errors import ConfigError

EX_CONFIG = 78  # sysexits.h: systemd is told not to restart-loop on a bad config
DEFAULT_CONFIG = Path("/etc/edgewise/agent.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewise-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve models from the broker on the configured source")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    run.add_argument(
        "--max-results", type=int, help="exit after this many results (tests, benchmarks)"
    )
    bench = sub.add_parser("bench", help="the agent's frame path against a bare loop")
    bench.add_argument("--package", type=Path, required=True, help="a package folder")
    bench.add_argument("--source", required=True, help="a video file")
    bench.add_argument("--frames", type=int, default=500)
    bench.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    bench.add_argument("--json", action="store_true", help="also print the figures as JSON")
    check = sub.add_parser("check-config", help="validate the config file and exit")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    if args.command == "bench":
        from .bench import print_table, run_bench

        report = run_bench(args.package, args.source, args.frames, args.threads)
        print_table(report)
        if args.json:
            print(json.dumps(report))
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"edgewise-agent: config error: {exc}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: ok (device {config.device.id})")
        return 0

    from .daemon import Agent  # keep check-config light: no onnxruntime import

    try:
        agent = Agent(config, max_results=args.max_results, config_path=args.config)
    except ContractError as exc:  # e.g. a trusted key file that is missing or not Ed25519
        print(
            f"edgewise-agent: config error: {args.config}: trust.public_keys: {exc}",
            file=sys.stderr,
        )
        return EX_CONFIG
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
