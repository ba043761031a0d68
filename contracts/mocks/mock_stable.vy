# pragma version ~=0.4.3
"""
@title Mock stablecoin (dUSD) for devnets
@custom:contract-name mock_stable
@license Apache-2.0
@notice A 6-decimal ERC-20 that anyone can mint. Deployed only on
        local devnets and in tests; production uses a real stablecoin.
        Like USDC it takes EIP-3009 `transferWithAuthorization`, so an
        unmodified x402 client can pay with it (the `exact` EVM scheme),
        and its EIP-712 domain (name "Devnet USD", version "1") is readable
        on chain through `name()` and `version()`.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20
from snekmate.utils import ecdsa

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.IERC20,
    erc20.IERC20Detailed,
    erc20.burn,
    erc20.burn_from,
    erc20.permit,
    erc20.nonces,
    erc20.DOMAIN_SEPARATOR,
    erc20.owner,
)


# @dev The version of the EIP-712 domain, as USDC's `version()` returns it.
_VERSION: constant(String[20]) = "1"

# @dev EIP-3009's type hash, as in USDC's `EIP3009.sol`.
TRANSFER_WITH_AUTHORIZATION_TYPEHASH: public(constant(bytes32)) = keccak256(
    "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)


event AuthorizationUsed:
    authorizer: indexed(address)
    nonce: indexed(bytes32)


# @dev Whether an authorizer's nonce was used (EIP-3009 nonces are random, not sequential).
authorizationState: public(HashMap[address, HashMap[bytes32, bool]])


@deploy
def __init__():
    ownable.__init__()
    erc20.__init__("Devnet USD", "dUSD", 6, "Devnet USD", _VERSION)


@external
def mint(to: address, amount: uint256):
    """
    @notice Open mint: devnet only.
    @param to Receiver.
    @param amount Amount in 6-decimal units.
    """
    erc20._mint(to, amount)


@external
@view
def version() -> String[20]:
    """
    @notice The version of this token's EIP-712 domain (as USDC's `version()`).
    @return The version string, "1".
    """
    return _VERSION


# ------------------------------------------------------------ EIP-3009


@external
def transferWithAuthorization(
    _from: address,
    to: address,
    amount: uint256,
    valid_after: uint256,
    valid_before: uint256,
    nonce: bytes32,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    """
    @notice Move `amount` from `_from` to `to` with `_from`'s EIP-712 signature of
            TransferWithAuthorization (EIP-3009); anyone may submit it, once.
    @param _from The payer, who signed.
    @param to The payee.
    @param amount Amount in 6-decimal units.
    @param valid_after The authorization is valid only after this time (exclusive).
    @param valid_before The authorization is valid only before this time (exclusive).
    @param nonce A unique 32-byte nonce chosen by the payer.
    @param v The secp256k1 1-byte signature parameter `v`.
    @param r The secp256k1 32-byte signature parameter `r`.
    @param s The secp256k1 32-byte signature parameter `s`.
    """
    assert block.timestamp > valid_after, "mock_stable: authorization is not yet valid"
    assert block.timestamp < valid_before, "mock_stable: authorization is expired"
    assert not self.authorizationState[_from][nonce], "mock_stable: authorization is used"
    struct_hash: bytes32 = keccak256(
        abi_encode(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, _from, to, amount, valid_after, valid_before, nonce)
    )
    digest: bytes32 = erc20.eip712_domain_separator._hash_typed_data_v4(struct_hash)
    signer: address = ecdsa._recover_vrs(digest, convert(v, uint256), convert(r, uint256), convert(s, uint256))
    # _recover_vrs never returns empty(address) for a signature it accepts, so a zero `_from` cannot pass
    assert signer == _from, "mock_stable: invalid signature"
    self.authorizationState[_from][nonce] = True
    log AuthorizationUsed(authorizer=_from, nonce=nonce)
    erc20._transfer(_from, to, amount)
