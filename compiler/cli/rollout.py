"""``edgewise rollout create|list|status|pause|resume|abort``: rollouts in waves, as records in
the rollout database that the controller in ``edgewise serve --db`` drives.

These commands only read and write the database: ``create`` records a rollout (running, wave 1),
``pause``, ``resume`` and ``abort`` set its state, and the controller acts on it (stops sending,
sends again, rolls the current wave back). ``--db`` is a SQLite file (default
./edgewise-rollouts.db) or a PostgreSQL DSN (postgresql://USER@HOST/DB).

Exit codes: 0 done; 1 the database could not be reached or failed; 2 bad usage or input (a
package, a rule, an unknown rollout id, a state that does not allow the change).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import time
from itertools import pairwise
from pathlib import Path
from typing import get_args

from .. import arguments as arg
from ..errors import InputError
from ..rollout.plan import (
    DEFAULT_RULES,
    AbortRule,
    Criteria,
    Metric,
    RolloutSpec,
    Wave,
    exponential,
    parse_waves,
)
from .common import Subparsers

DEFAULT_DB = "edgewise-rollouts.db"
METRICS = get_args(Metric)
_RULE = re.compile(
    r"^\s*(?P<metric>[a-z0-9_]+)\s*(?P<op>>=|<=|>|<)\s*(?P<threshold>[^:\s]+)\s*"
    r"(?::\s*min\s*=\s*(?P<min>\S+))?\s*$"
)
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

EPILOG = """\
waves are cumulative: 1,10%,50%,100% is one device, then up to 10% of the target, then 50%,
then all (a last 100% is added when missing); --exponential 1,2 is 1, 2, 4, 8... devices.
A wave advances only on devices that succeeded: passed probation (and, with --agreement,
a shadow agreement's lower bound ≥ X over ≥ --min-frames frames before promotion).
RULE is 'metric op threshold[:min=N]' over the current wave's devices that reported, once
at least N did; metric: failed_pct, no_answer_pct, error_rate, p99_ms, agreement; op: > >= < <=.
  edgewise rollout create digits-cnn-1.1.0 --to group:cams --waves 1,10%,50%,100% \\
      --abort-if 'failed_pct>0' --abort-if 'p99_ms>=50:min=3'
  edgewise rollout status digits-cnn-1_1_0-3f2a
"""


def abort_rule(value: str) -> AbortRule:
    """``metric op threshold[:min=N]``, e.g. ``failed_pct>0`` or ``p99_ms>=50:min=3``."""
    match = _RULE.match(value)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a rule: write metric op threshold[:min=N], e.g. 'failed_pct>0' "
            "or 'p99_ms>=50:min=3'"
        )
    metric = match["metric"]
    if metric not in METRICS:
        raise argparse.ArgumentTypeError(
            f"{value!r}: unknown metric {metric!r} (one of {', '.join(METRICS)})"
        )
    threshold = arg.non_negative_float(match["threshold"])
    minimum = arg.positive_int(match["min"]) if match["min"] is not None else 1
    return AbortRule.model_validate(
        {"metric": metric, "op": match["op"], "threshold": threshold, "min_devices": minimum}
    )


def waves_text(value: str) -> tuple[Wave, ...]:
    """``--waves``, refused unless each wave is larger than the one before (of the same kind:
    a count and a percentage compare only once the fleet's size is known)."""
    try:
        waves = parse_waves(value)
    except InputError as exc:  # parse_waves names the wave and what a wave may be
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--waves: ")) from None
    for kind in ("count", "percent"):
        sizes = [getattr(w, kind) for w in waves if getattr(w, kind) is not None]
        if any(later <= earlier for earlier, later in pairwise(sizes)):
            raise argparse.ArgumentTypeError(
                f"{value!r}: waves are cumulative, so each is larger than the one before "
                "(e.g. 1,10%,50%,100%)"
            )
    return waves


def exponential_text(value: str) -> tuple[Wave, ...]:
    base, comma, factor = value.partition(",")
    if not comma:
        raise argparse.ArgumentTypeError(f"{value!r} is not BASE,FACTOR (e.g. 1,2)")
    try:
        return exponential(arg.positive_int(base.strip()), arg.positive_float(factor.strip()))
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--exponential: ")) from None


def rollout_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a rollout id: letters, digits, '_' and '-', at most 64"
        )
    return value


def _db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", type=arg.nonempty, default=DEFAULT_DB, metavar="DB",
        help=f"a SQLite file (default ./{DEFAULT_DB}) or a PostgreSQL DSN (postgresql://...)",
    )  # fmt: skip


def add_rollout(sub: Subparsers) -> None:
    rollout = sub.add_parser(
        "rollout",
        help="roll a package out in waves, judged on the devices; pause, resume, abort",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_create(actions)
    listing = actions.add_parser("list", help="every rollout, the newest first")
    _db(listing)
    listing.set_defaults(func=run_list)
    status = actions.add_parser(
        "status", help="state, wave, devices per wave and state, abort reason and evidence"
    )
    status.add_argument("id", type=rollout_id, metavar="ID", help="the rollout's id")
    status.add_argument("--json", action="store_true", help="one JSON document")
    _db(status)
    status.set_defaults(func=run_status)
    for name, text in (
        ("pause", "stop starting new devices; devices in flight finish"),
        ("resume", "carry on with a paused rollout"),
        ("abort", "stop and roll the current wave back (the controller does it)"),
    ):
        change = actions.add_parser(name, help=text)
        change.add_argument("id", type=rollout_id, metavar="ID", help="the rollout's id")
        if name == "abort":
            change.add_argument(
                "--reason", type=arg.nonempty, default="aborted by hand",
                help="recorded with the rollout",
            )  # fmt: skip
        _db(change)
        change.set_defaults(func=run_change, change=name)


def _add_create(actions: Subparsers) -> None:
    create = actions.add_parser(
        "create",
        help="record a rollout of a package to a target, in waves",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("package", type=Path, metavar="PKG", help="the package folder")
    create.add_argument(
        "--to", type=arg.target, required=True, metavar="device:ID|group:NAME|all",
        help="the devices the rollout reaches, in waves",
    )  # fmt: skip
    waves = create.add_mutually_exclusive_group(required=True)
    waves.add_argument(
        "--waves", type=waves_text, metavar="1,10%,50%,100%",
        help="cumulative wave sizes: device counts or percentages of the target",
    )  # fmt: skip
    waves.add_argument(
        "--exponential", type=exponential_text, metavar="BASE,FACTOR", dest="waves",
        help="waves of BASE, BASE*FACTOR, BASE*FACTOR^2... devices",
    )  # fmt: skip
    create.add_argument(
        "--agreement", type=arg.labeled_fraction, metavar="X",
        help="first run it as a shadow; promote once agreement's lower bound ≥ X",
    )  # fmt: skip
    create.add_argument(
        "--min-frames", type=arg.positive_int, metavar="N",
        help="with --agreement: over at least N frames (default 100)",
    )  # fmt: skip
    create.add_argument(
        "--abort-if", type=abort_rule, action="append", metavar="RULE",
        help="repeatable; default 'failed_pct>0'",
    )  # fmt: skip
    create.add_argument(
        "--answer-s", type=arg.positive_float, default=300.0, metavar="S",
        help="a device with no final answer this long after its wave started counts as "
        "no_answer (default 300)",
    )  # fmt: skip
    create.add_argument("--id", type=rollout_id, help="default NAME-VERSION-XXXX")
    _db(create)
    create.set_defaults(func=run_create)


def default_id(name: str, version: str) -> str:
    """``NAME-VERSION-XXXX``, with what an id may not hold ('.', '+') written as '_'."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", f"{name}-{version}")[:59]
    return f"{stem}-{secrets.token_hex(2)}"


def _spec(args: argparse.Namespace) -> RolloutSpec:
    from ..fleet.push_command import load_package

    if args.min_frames is not None and args.agreement is None:
        raise InputError("--min-frames goes with --agreement X")
    package = load_package(args.package)
    name, version = package.manifest.name, package.manifest.version
    criteria = Criteria(agreement=args.agreement, min_frames=args.min_frames or 100)
    return RolloutSpec(
        id=args.id or default_id(name, version),
        package=str(package.root.resolve()),
        name=name,
        version=version,
        target=args.to,
        waves=args.waves,
        criteria=criteria,
        rules=tuple(args.abort_if or DEFAULT_RULES),
        answer_s=args.answer_s,
        created_at=time.time(),
    )


def run_create(args: argparse.Namespace) -> int:
    from ..rollout.store import open_store

    spec = _spec(args)
    with open_store(args.db) as store:
        store.create(spec)
    waves = ", ".join(w.describe() for w in spec.waves)
    print(
        f"rollout {spec.id}: {spec.name} {spec.version} to {spec.target} in waves {waves}; "
        f"recorded in {args.db}, driven by `edgewise serve --db`"
    )
    return 0


def _missing_sqlite(db: str) -> bool:
    """A SQLite file that is not there: reading must not create an empty database."""
    from ..rollout.store import is_postgres

    return not is_postgres(db) and not Path(db).exists()


def run_list(args: argparse.Namespace) -> int:
    from ..rollout.report import list_lines
    from ..rollout.store import open_store

    if _missing_sqlite(args.db):
        print(f"no rollouts: {args.db} does not exist (`edgewise rollout create` makes it)")
        return 0
    with open_store(args.db) as store:
        rollouts = store.list()
    if not rollouts:
        print(f"no rollouts in {args.db}")
    for line in list_lines(rollouts) if rollouts else []:
        print(line)
    return 0


def run_status(args: argparse.Namespace) -> int:
    from ..rollout.report import as_json, status_lines
    from ..rollout.store import UnknownRollout, open_store

    if _missing_sqlite(args.db):
        raise UnknownRollout(args.id)
    with open_store(args.db) as store:
        rollout = store.get(args.id)
        if rollout is None:
            raise UnknownRollout(args.id)
        records = store.devices(args.id)
    if args.json:
        print(json.dumps(as_json(rollout, records), default=str))
    else:
        print("\n".join(status_lines(rollout, records)))
    return 0


def run_change(args: argparse.Namespace) -> int:
    from ..rollout.changes import apply_change
    from ..rollout.store import UnknownRollout, open_store

    if _missing_sqlite(args.db):
        raise UnknownRollout(args.id)
    with open_store(args.db) as store:
        changed = apply_change(store, args.id, args.change, getattr(args, "reason", ""))
    print(changed.line())
    return 0
