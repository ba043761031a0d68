"""The error catalog: every error Allmende raises on purpose, with its stable code and the
HTTP status it leaves a node's API with (`allmende.api.wire.error_response`, the one place
errors go out; the gateway wraps the same status and code in OpenAI's shape).

One root, stdlib mixins so callers can catch either. Where a class lives is given when
it is not here (it needs that package's types); tests/core/test_errors.py checks this
table against the classes, so it cannot drift::

    class                          code                      status  where
    AllmendeError                  allmende_error            500
    ├── InvalidInput (ValueError)  invalid_input             400
    │   ├── AmountOverflow         amount_overflow           400
    │   ├── InvalidSignature       invalid_signature         400
    │   ├── UnknownModel           unknown_model             400
    │   ├── InvalidModelName       invalid_model_name        400
    │   ├── InvalidManifest        invalid_manifest          400
    │   ├── BodyTooLarge           body_too_large            413
    │   ├── BodyTooSlow            body_too_slow             408
    │   ├── InvalidParameter       invalid_request           400     api.protocol
    │   ├── EnvelopeError          bad_envelope              400     core.envelope
    │   ├── ProofFormatError       bad_proof                 400     core.proofs
    │   ├── KeystoreError          bad_key                   400     chain.keys
    │   ├── BadEvidence            bad_evidence              400     validator.evidence
    │   ├── InvalidStage           invalid_stage             400     core.stages
    │   ├── Overcharged            session_overcharged       400     core.x402_session
    │   └── EngineError            engine_error              400     engine.base
    │       ├── PromptTooLong      context_length_exceeded   400     engine.base
    │       ├── StageSessionLost   stage_session_lost        409     engine.stages
    │       └── RpcServerLost      rpc_server_lost           503     engine.llamacpp_rpc
    ├── ChainError (RuntimeError)  chain_error               503     chain.errors
    │   ├── RpcUnavailable         rpc_unavailable           503     chain.errors
    │   ├── RpcRefused             rpc_refused               503     chain.errors
    │   │   └── LogRangeTooLarge   log_range_too_large       503     chain.errors
    │   ├── ContractReverted       contract_reverted         503     chain.errors
    │   ├── TransactionFailed      transaction_failed        503     chain.errors
    │   └── DeploymentNotFound     deployment_not_found      503     chain.errors
    ├── UpstreamError              upstream_error            502
    │   ├── ProviderReplyError     (provider's)              (its)   api.client
    │   ├── BadReceipt             bad_receipt               502     payer.receipts
    │   ├── BadStageReply          bad_stage_reply           502     payer.stages
    │   └── NoStageProvider        no_provider_available     503     payer.stages
    ├── RequestRefused             request_refused           403
    │   ├── HostNotAllowed         host_not_allowed          403
    │   ├── OriginNotAllowed       origin_not_allowed        403
    │   └── UnsupportedMediaType   unsupported_media_type    415
    ├── ProviderError              bad_request               400     provider.errors
    │   ├── BadRequest             bad_request               400     provider.errors
    │   ├── UnknownModelError      unknown_model             404     provider.errors
    │   ├── ReplayedRequest        replayed_request          409     provider.errors
    │   ├── PayerNotAuthenticated  payer_not_authenticated   401     provider.errors
    │   ├── BadVoucher             bad_voucher               402     provider.errors
    │   ├── PaymentRequired        payment_required          402     provider.errors
    │   ├── Overloaded             overloaded                429     provider.errors
    │   └── TooLarge               body_too_large            413     provider.errors
    ├── EvidenceNotFound           not_found                 404     validator.app
    ├── NodeFailed                 node_failed               500     node.supervisor
    ├── SpendingCapReached         spending_cap_reached      402     agent.policy
    ├── InsufficientFunds          insufficient_quota        402     payer.errors
    ├── VaultError                 vault_error               400     vault.errors
    │   ├── BadJob                 bad_job                   400     vault.errors
    │   ├── TemplateNotAllowed     template_not_allowed      403     vault.errors
    │   ├── AccessDenied           access_denied             403     vault.errors
    │   ├── BudgetExceeded         privacy_budget_exceeded   403     vault.errors
    │   ├── UnknownDataset         unknown_dataset           404     vault.errors
    │   ├── BadDataFile            bad_data_file             400     vault.errors
    │   ├── ParametersNotGranted   parameters_not_granted    403     vault.errors
    │   ├── DifferencingRefused    differencing_refused      403     vault.errors
    │   ├── VaultRequestRefused    vault_request_refused     403     vault.errors
    │   ├── RequestReplayed        request_replayed          409     vault.errors
    │   ├── StageRefused           stage_refused             409     vault.errors
    │   ├── ChainUnconfirmed       chain_unconfirmed         503     vault.errors
    │   ├── VaultRefused           vault_refused             400     vault.flower
    │   │   └── RoundRefused       round_refused             400     vault.flower
    │   └── AttestationRefused     attestation_refused       400     vault.lm_attest
    └── GatewayError               invalid_request           400     gateway.errors
        (OpenAI's codes: invalid_api_key 401, model_not_found 404, insufficient_quota 402,
         rate_limit_exceeded 429, no_provider_available 503, request_too_large 413;
         and model_name_ambiguous 409)
"""

from __future__ import annotations


class AllmendeError(Exception):
    """Root of every error Allmende raises on purpose."""

    code: str = "allmende_error"
    status: int = 500


class InvalidInput(AllmendeError, ValueError):
    """The caller passed something that can never be valid."""

    code = "invalid_input"
    status = 400


class AmountOverflow(InvalidInput):
    """An amount is negative or does not fit the on-chain integer type."""

    code = "amount_overflow"


class InvalidSignature(InvalidInput):
    """A signature is malformed or was not made by the expected account."""

    code = "invalid_signature"


class UnknownModel(InvalidInput):
    """A model id or name that is not known here."""

    code = "unknown_model"


class InvalidModelName(InvalidInput):
    """A model name that is not canonical (see `allmende.core.model_names`)."""

    code = "invalid_model_name"


class InvalidManifest(InvalidInput):
    """A model folder that cannot be turned into a manifest."""

    code = "invalid_manifest"


class BodyTooLarge(InvalidInput):
    """A request body beyond the node's size limit."""

    code = "body_too_large"
    status = 413


class BodyTooSlow(InvalidInput):
    """A request body that did not arrive within the node's time limit."""

    code = "body_too_slow"
    status = 408


class UpstreamError(AllmendeError):
    """Another node answered badly (an error, or an answer we must not accept)."""

    code = "upstream_error"
    status = 502


class RequestRefused(AllmendeError):
    """A request a node refuses to serve for where it comes from, whatever it asks for
    (`allmende.api.guard`: a web page's cross-site or DNS-rebinding request)."""

    code = "request_refused"
    status = 403


class HostNotAllowed(RequestRefused):
    """A `Host` header naming none of the node's names: a DNS-rebinding page, or a name the
    operator has not allowed (`--allowed-host`)."""

    code = "host_not_allowed"


class OriginNotAllowed(RequestRefused):
    """A browser request from a page on another origin the operator has not allowed (`--allow-origin`)."""

    code = "origin_not_allowed"


class UnsupportedMediaType(RequestRefused):
    """A request body that is not of the route's media type (JSON): what a web page can send
    across sites without a CORS preflight (text/plain, forms) is never served."""

    code = "unsupported_media_type"
    status = 415
