# pragma version ~=0.4.3
"""
@title Allmende Timelock
@custom:contract-name timelock
@license Apache-2.0
@notice snekmate's timelock controller: after deployment it owns Params, Registry,
        Channels, ALM minting and the treasury. Only the Governor may schedule
        (PROPOSER_ROLE); anyone may execute a ready operation; it administers itself.
"""

from snekmate.auth import access_control
from snekmate.governance import timelock_controller

initializes: access_control
initializes: timelock_controller[access_control := access_control]

exports: timelock_controller.__interface__


@deploy
@payable
def __init__(
    minimum_delay_: uint256,
    proposers_: DynArray[address, 255],
    executors_: DynArray[address, 255],
    admin_: address,
):
    access_control.__init__()
    timelock_controller.__init__(minimum_delay_, proposers_, executors_, admin_)
