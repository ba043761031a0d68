"""Exceptions raised by Allmende's Python API.

One root, stdlib mixins so callers can catch either::

    AllmendeError
    ├── InvalidInput (ValueError)
    │   ├── AmountOverflow          an amount outside uint256 / the contract's range
    │   ├── InvalidSignature        malformed, malleable or not from the expected signer
    │   ├── UnknownModel            a model id or name nobody registered or serves
    │   └── InvalidManifest         a model folder that cannot be content-addressed
    └── ChainError (RuntimeError)   defined in allmende.chain: reverts, RPC failures
"""

from __future__ import annotations


class AllmendeError(Exception):
    """Root of every error Allmende raises on purpose."""

    code: str = "allmende_error"


class InvalidInput(AllmendeError, ValueError):
    """The caller passed something that can never be valid."""

    code = "invalid_input"


class AmountOverflow(InvalidInput):
    """An amount is negative or does not fit the on-chain integer type."""

    code = "amount_overflow"


class InvalidSignature(InvalidInput):
    """A signature is malformed or was not made by the expected account."""

    code = "invalid_signature"


class UnknownModel(InvalidInput):
    """A model id or name that is not known here."""

    code = "unknown_model"


class InvalidManifest(InvalidInput):
    """A model folder that cannot be turned into a manifest."""

    code = "invalid_manifest"
