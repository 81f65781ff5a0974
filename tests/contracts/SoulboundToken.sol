// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @notice A soul-bound ERC-721 for tests: the issuer mints and revokes, holders cannot move tokens.
/// Every token of one contract has the contract's `tokenType` ("identity", "reputation", ...).
contract SoulboundToken {
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);

    error Soulbound();
    error NotIssuer();
    error ZeroAddress();
    error NoSuchToken(uint256 tokenId);

    string public name;
    string public symbol;
    string public tokenType;
    address public immutable issuer;
    uint256 public totalMinted;

    mapping(uint256 => address) private _owners;
    mapping(address => uint256) private _balances;

    constructor(string memory name_, string memory symbol_, string memory tokenType_) {
        name = name_;
        symbol = symbol_;
        tokenType = tokenType_;
        issuer = msg.sender;
    }

    modifier onlyIssuer() {
        if (msg.sender != issuer) revert NotIssuer();
        _;
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7 || interfaceId == 0x80ac58cd; // ERC-165, ERC-721
    }

    function balanceOf(address owner) external view returns (uint256) {
        if (owner == address(0)) revert ZeroAddress();
        return _balances[owner];
    }

    function ownerOf(uint256 tokenId) external view returns (address owner) {
        owner = _owners[tokenId];
        if (owner == address(0)) revert NoSuchToken(tokenId);
    }

    function mint(address to) external onlyIssuer returns (uint256 tokenId) {
        if (to == address(0)) revert ZeroAddress();
        tokenId = ++totalMinted;
        _owners[tokenId] = to;
        _balances[to] += 1;
        emit Transfer(address(0), to, tokenId);
    }

    function revoke(uint256 tokenId) external onlyIssuer {
        address owner = _owners[tokenId];
        if (owner == address(0)) revert NoSuchToken(tokenId);
        delete _owners[tokenId];
        _balances[owner] -= 1;
        emit Transfer(owner, address(0), tokenId);
    }

    function getApproved(uint256) external pure returns (address) {
        return address(0);
    }

    function isApprovedForAll(address, address) external pure returns (bool) {
        return false;
    }

    function approve(address, uint256) external pure {
        revert Soulbound();
    }

    function setApprovalForAll(address, bool) external pure {
        revert Soulbound();
    }

    function transferFrom(address, address, uint256) external pure {
        revert Soulbound();
    }

    function safeTransferFrom(address, address, uint256) external pure {
        revert Soulbound();
    }

    function safeTransferFrom(address, address, uint256, bytes calldata) external pure {
        revert Soulbound();
    }
}
