# pragma version ~=0.4.3
"""
@title Mock fee-on-transfer token (tests only)
@custom:contract-name mock_fee_token
@license Apache-2.0
@notice A minimal ERC-20 that burns 1 % of every transfer, as some real tokens
        (or a token whose issuer switches on a fee) do. Channels must refuse it.
"""

BPS: constant(uint256) = 10_000
FEE_BPS: constant(uint256) = 100

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)


@external
def mint(to: address, amount: uint256):
    """
    @notice Open mint: tests only.
    """
    self.balanceOf[to] += amount
    self.totalSupply += amount


@external
def approve(spender: address, amount: uint256) -> bool:
    """
    @notice Lets `spender` move `amount` of the caller's tokens.
    """
    self.allowance[msg.sender][spender] = amount
    return True


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Moves `amount`; the receiver gets 1 % less.
    """
    self._move(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Moves `amount` with an allowance; the receiver gets 1 % less.
    """
    self.allowance[owner][msg.sender] -= amount
    self._move(owner, to, amount)
    return True


@internal
def _move(owner: address, to: address, amount: uint256):
    fee: uint256 = amount * FEE_BPS // BPS
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount - fee
    self.totalSupply -= fee
