# pragma version ~=0.4.3
"""
@title Mock stablecoin (dUSD) for devnets
@custom:contract-name mock_stable
@license Apache-2.0
@notice A 6-decimal ERC-20 that anyone can mint. Deployed only on
        local devnets and in tests; production uses a real stablecoin.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

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


@deploy
def __init__():
    ownable.__init__()
    erc20.__init__("Devnet USD", "dUSD", 6, "Devnet USD", "1")


@external
def mint(to: address, amount: uint256):
    """
    @notice Open mint: devnet only.
    @param to Receiver.
    @param amount Amount in 6-decimal units.
    """
    erc20._mint(to, amount)
