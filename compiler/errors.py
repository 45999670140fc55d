"""The compiler's exceptions; the CLI turns any of them into one line and ``exit_code``.

2 means the input or the usage is wrong (fix the command); 1 means something failed while
running (the broker, a device, the machine): the same command may work later.
"""


class CompilerError(Exception):
    """Base class for errors raised by the compiler and its fleet tools."""

    exit_code = 1


class InputError(CompilerError):
    """A file, folder or value the user gave cannot be used as given."""

    exit_code = 2


class ModelInputError(InputError):
    """The model argument names nothing loadable as an ``nn.Module``."""


class ExportError(InputError):
    """The exported ONNX graph does not reproduce the torch model's outputs."""


class AccuracyBudgetError(InputError):
    """int8 accuracy dropped further below fp32 than allowed; no package was written."""


class BrokerUnavailable(CompilerError):
    """The broker could not be reached or refused the connection."""


class BrokerError(CompilerError):
    """A local broker (demo, tests) could not be started."""


class PushError(CompilerError):
    """The broker did not acknowledge part of a package."""
