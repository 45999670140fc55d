"""The agent's exceptions. Contract errors (manifests, signatures) live in ``agent.contract``."""


class AgentError(Exception):
    """Base class for errors raised by the agent."""


class ConfigError(AgentError):
    """The config file is missing, unreadable or invalid; the message names file and key."""


class UsageError(AgentError):
    """Bad input on the command line: a package folder or video that is missing or unusable."""


class SourceError(AgentError):
    """A frame source cannot be opened or stopped producing frames."""


class ModelLoadError(AgentError):
    """ONNX Runtime cannot load a model, or it does not match its manifest."""


class DeployError(AgentError):
    """A package could not be fetched or installed; what was serving keeps serving."""


class ActivationError(DeployError):
    """An installed version cannot be served: it fails verification or its golden check, it is
    quarantined, or there is no previous version to roll back to. What serves keeps serving."""


class NotInstalled(ActivationError):
    """No slot on this device holds the version asked for."""


class DeployerBusy(DeployError):
    """The deployer did not take up a request in time (a deployment held it); nothing changed."""
