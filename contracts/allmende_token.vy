# pragma version ~=0.4.3
"""
@title Allmende Token (ALM)
@custom:contract-name allmende_token
@license Apache-2.0
@notice ERC-20 (+ EIP-2612 permit) used for provider and validator
        stake and for governance votes. 18 decimals. Minting is
        restricted to minters appointed by the owner; after deployment
        the owner is the protocol Timelock, so new ALM only comes from
        a governance decision.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: erc20.__interface__


@deploy
def __init__(initial_supply: uint256, holder: address):
    """
    @dev Mints `initial_supply` to `holder` and makes the deployer the
         owner (and thus the only minter) until ownership is handed to
         the Timelock.
    @param initial_supply Amount in wei-units (18 decimals).
    @param holder Receiver of the initial supply.
    """
    ownable.__init__()
    erc20.__init__("Allmende", "ALM", 18, "Allmende Token", "1")
    if initial_supply > 0:
        erc20._mint(holder, initial_supply)
