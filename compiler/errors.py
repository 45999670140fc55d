"""The compiler's exceptions; the CLI turns any of them into one line and ``exit_code``.

The codes (the README's table lists them all): 2 the command is wrong (an option, a value, a
file or folder it names that is missing or of the wrong kind): fix the command; 65 (EX_DATAERR)
a file's content cannot be used (a dataset, a model, a spec, a package): fix the file; 1 the
work failed while running (a compile that misses its accuracy budget, a broker, a device, the
machine): the same command may work later or with other settings.
"""

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 65  # sysexits.h EX_DATAERR


class CompilerError(Exception):
    """Base class for errors raised by the compiler and its fleet tools."""

    exit_code = EXIT_FAILED


class InputError(CompilerError):
    """A file, folder or value the user gave cannot be used as given."""

    exit_code = EXIT_USAGE


class BadData(InputError):
    """A file the user named exists but its content cannot be used (not a dataset, a model, a
    spec, a package)."""

    exit_code = EXIT_DATA


class ModelInputError(BadData):
    """The model argument names nothing loadable as an ``nn.Module``."""


class ExportError(CompilerError):
    """The exported ONNX graph does not reproduce the torch model's outputs."""


class AccuracyBudgetError(CompilerError):
    """int8 accuracy dropped further below fp32 than allowed; no package was written."""


class BrokerUnavailable(CompilerError):
    """The broker could not be reached or refused the connection."""


class BrokerError(CompilerError):
    """A local broker (demo, tests) could not be started."""


class PushError(CompilerError):
    """The broker did not acknowledge part of a package."""
