"""The one boundary where an exception becomes what a user reads: one line and an exit code.

The codes (the README's "Command-line habits" table): 0 done; 1 the work failed while running
(a broker, a device, the machine, a compile that missed its accuracy budget); 2 the usage or a
value is wrong (fix the command); 65 a file's content cannot be used (fix the file); 69 an
extra's packages are not installed; 130 interrupted. A traceback is only logged at debug level
(``-v``), never printed otherwise.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from agent.contract import ContractError
from agent.extras import EX_UNAVAILABLE, extra_of

from .errors import EXIT_DATA, EXIT_FAILED, EXIT_USAGE, CompilerError

EXIT_INPUT = EXIT_USAGE  # the name earlier code used
EXIT_UNAVAILABLE = EX_UNAVAILABLE
EXIT_INTERRUPTED = 130
MAX_LINE = 400

__all__ = ["EXIT_DATA", "EXIT_FAILED", "EXIT_USAGE", "describe", "guarded", "one_line"]

log = logging.getLogger("edgewise")


def one_line(text: str) -> str:
    """Whitespace collapsed and long messages cut, so a message never spills over lines."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_LINE else flat[: MAX_LINE - 1] + "…"


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the message for ``exc``."""
    if isinstance(exc, CompilerError):
        return exc.exit_code, str(exc)
    if isinstance(exc, ContractError):  # a package, key or manifest that does not verify
        return EXIT_DATA, str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name and extra_of(exc.name):
        extra = extra_of(exc.name)
        return EXIT_UNAVAILABLE, (
            f'this needs the "{extra}" extra (missing: {exc.name}): '
            f"pip install 'edgewise[{extra}]'"
        )
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_FAILED, f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return EXIT_FAILED, "out of memory; close other programs or use a smaller input"
    return EXIT_FAILED, (
        f"unexpected {type(exc).__name__}: {exc} (run with -v for details, and please report it)"
    )


def guarded(prog: str, run: Callable[[], int]) -> int:
    """Runs ``run`` and turns whatever escapes it into one line on stderr and an exit code."""
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code, message = describe(exc)
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: {one_line(message)}", file=sys.stderr)
        return code
