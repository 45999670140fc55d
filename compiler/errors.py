"""The compiler's exceptions; the CLI turns any of them into a message and a non-zero exit."""


class CompilerError(Exception):
    """Base class for errors raised by the compiler and its fleet tools."""


class ModelInputError(CompilerError):
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
