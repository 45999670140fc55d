"""Errors raised while reading or checking what crosses the wire."""


class ContractError(Exception):
    """Base class: a message or package does not satisfy the wire contract."""


class ManifestError(ContractError):
    """A manifest is malformed or violates the schema."""


class SignatureError(ContractError):
    """A manifest is unsigned, signed by an untrusted key, or its signature does not verify."""


class IntegrityError(ContractError):
    """Model bytes do not match the size or sha256 the manifest declares."""


class PayloadError(ContractError):
    """A message is not strict JSON: not UTF-8, NaN or Infinity, a lone surrogate, a duplicate
    key, or nested deeper than the limit."""
