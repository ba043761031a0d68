"""Pure protocol logic: EIP-712 messages, money maths, model ids. No I/O here."""

from allmende.core.authorization import RequestAuthorization
from allmende.core.eip712 import Domain
from allmende.core.errors import (
    AllmendeError,
    AmountOverflow,
    InvalidInput,
    InvalidManifest,
    InvalidSignature,
    UnknownModel,
)
from allmende.core.fees import (
    RELAY_MODEL,
    FeeSplit,
    effective_royalty_bps,
    relay_withdrawal_fee,
    request_cost,
    split_increment,
    split_payment,
)
from allmende.core.manifest import Manifest, build_manifest, model_id_of
from allmende.core.receipts import Receipt, SignedReceipt, sign_receipt
from allmende.core.vouchers import SignedVoucher, Voucher, sign_voucher

__all__ = [
    "RELAY_MODEL",
    "AllmendeError",
    "AmountOverflow",
    "Domain",
    "FeeSplit",
    "InvalidInput",
    "InvalidManifest",
    "InvalidSignature",
    "Manifest",
    "Receipt",
    "RequestAuthorization",
    "SignedReceipt",
    "SignedVoucher",
    "UnknownModel",
    "Voucher",
    "build_manifest",
    "effective_royalty_bps",
    "model_id_of",
    "relay_withdrawal_fee",
    "request_cost",
    "sign_receipt",
    "sign_voucher",
    "split_increment",
    "split_payment",
]
