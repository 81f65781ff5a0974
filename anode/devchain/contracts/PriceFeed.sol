// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @notice A Chainlink AggregatorV3Interface for dev chains and tests: the owner sets each round.
contract PriceFeed {
    struct Round {
        int256 answer;
        uint256 startedAt;
        uint256 updatedAt;
        uint80 answeredInRound;
    }

    error NotOwner();
    error NoSuchRound(uint80 roundId);

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    address public immutable owner;
    uint8 public immutable decimals;
    string public description;
    uint256 public constant version = 4;
    uint80 public latestRound;
    mapping(uint80 => Round) private _rounds;

    constructor(address owner_, uint8 decimals_, string memory description_, int256 answer) {
        owner = owner_;
        decimals = decimals_;
        description = description_;
        _set(1, answer, block.timestamp, block.timestamp, 1);
    }

    /// @notice A new complete round with ``answer``, updated now.
    function setAnswer(int256 answer) external {
        _onlyOwner();
        uint80 roundId = latestRound + 1;
        _set(roundId, answer, block.timestamp, block.timestamp, roundId);
    }

    /// @notice Any round, as a misbehaving feed would report it (stale, incomplete, not positive).
    function setRound(uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
        external
    {
        _onlyOwner();
        _set(roundId, answer, startedAt, updatedAt, answeredInRound);
    }

    function latestRoundData() external view returns (uint80, int256, uint256, uint256, uint80) {
        return getRoundData(latestRound);
    }

    function getRoundData(uint80 roundId) public view returns (uint80, int256, uint256, uint256, uint80) {
        Round memory round = _rounds[roundId];
        if (round.updatedAt == 0 && round.answeredInRound == 0 && round.answer == 0) revert NoSuchRound(roundId);
        return (roundId, round.answer, round.startedAt, round.updatedAt, round.answeredInRound);
    }

    function _set(uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
        private
    {
        _rounds[roundId] = Round(answer, startedAt, updatedAt, answeredInRound);
        latestRound = roundId;
        emit AnswerUpdated(answer, roundId, updatedAt);
    }

    function _onlyOwner() private view {
        if (msg.sender != owner) revert NotOwner();
    }
}
