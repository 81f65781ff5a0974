// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

interface IERC20 {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
}

/// @notice Staking for the points token, with the two views aNode reads (anode/chain/reads.py):
/// `stakedBalanceOf` (withdrawable) and `lockedBalanceOf` (held in place by the operator).
/// The amounts are disjoint; the tokens of both sit in this contract.
contract PointsStaking {
    error NotOperator();
    error TransferFailed();
    error InsufficientStake(uint256 staked, uint256 needed);

    IERC20 public immutable token;
    address public immutable operator;
    mapping(address => uint256) public stakedBalanceOf;
    mapping(address => uint256) public lockedBalanceOf;

    constructor(IERC20 token_) {
        token = token_;
        operator = msg.sender;
    }

    /// Stake `amount` of the caller's tokens on behalf of `account`.
    function stakeFor(address account, uint256 amount) external {
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        stakedBalanceOf[account] += amount;
    }

    function unstake(uint256 amount) external {
        uint256 staked = stakedBalanceOf[msg.sender];
        if (staked < amount) revert InsufficientStake(staked, amount);
        stakedBalanceOf[msg.sender] = staked - amount;
        if (!token.transfer(msg.sender, amount)) revert TransferFailed();
    }

    /// Move `amount` of `account`'s stake into the locked bucket.
    function lock(address account, uint256 amount) external {
        if (msg.sender != operator) revert NotOperator();
        uint256 staked = stakedBalanceOf[account];
        if (staked < amount) revert InsufficientStake(staked, amount);
        stakedBalanceOf[account] = staked - amount;
        lockedBalanceOf[account] += amount;
    }
}
