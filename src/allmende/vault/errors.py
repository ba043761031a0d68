"""Typed errors of the vault; each leaves the HTTP API as {"error": {"code", "message"}}."""

from __future__ import annotations

from allmende.core.errors import AllmendeError


class VaultError(AllmendeError):
    status = 400
    code = "vault_error"


class BadJob(VaultError):
    code = "bad_job"


class TemplateNotAllowed(VaultError):
    """Only the job templates run; anything else (rows, exports, code) is refused."""

    status = 403
    code = "template_not_allowed"


class AccessDenied(VaultError):
    """No grant on chain permits this job (grantee, template, model, expiry, revocation)."""

    status = 403
    code = "access_denied"


class BudgetExceeded(VaultError):
    """The job would spend more epsilon than the grant has left; it did not run."""

    status = 403
    code = "privacy_budget_exceeded"


class UnknownDataset(VaultError):
    status = 404
    code = "unknown_dataset"


class BadDataFile(VaultError):
    code = "bad_data_file"


class ParametersNotGranted(AccessDenied):
    """A federated round sent parameters that are neither a model the grant covers nor one
    bounded step from the parameters this vault trained from in the run's previous round."""

    code = "parameters_not_granted"


class DifferencingRefused(VaultError):
    """An exact aggregate whose answer, with earlier ones, would isolate a small group."""

    status = 403
    code = "differencing_refused"


class VaultRequestRefused(AccessDenied):
    """A signed request this vault does not run: addressed to another vault, for another
    operation, expired (or expiring too far ahead), or not matching its body."""

    code = "vault_request_refused"


class RequestReplayed(VaultRequestRefused):
    """A request whose nonce this vault has seen from the same signer (a replay)."""

    status = 409
    code = "request_replayed"


class StageRefused(AccessDenied):
    """A federated stage out of order, a second time, or for a round that was never set up,
    was aborted or already finished."""

    status = 409
    code = "stage_refused"


class ChainUnconfirmed(VaultError):
    """The chain did not confirm a job's access in time; nothing was released."""

    status = 503
    code = "chain_unconfirmed"
