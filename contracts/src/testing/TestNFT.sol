// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title TestNFT (test fixture)
/// @notice A minimal ERC-721 + Ownable contract standing in for a BlockHost server's NFT
///         contract in tests and demos: its `owner()` is the key allowed to submit broker
///         requests (and release its allocation) for it.
contract TestNFT is ERC721, Ownable {
    /// @notice Number of tokens minted so far; token ids are 1..totalMinted.
    uint256 public totalMinted;

    constructor(address initialOwner) ERC721("BlockHost Test NFT", "BHTEST") Ownable(initialOwner) {}

    /// @notice Mints the next token id to `to` (owner only) and returns it.
    function mint(address to) external onlyOwner returns (uint256 tokenId) {
        tokenId = ++totalMinted;
        _mint(to, tokenId);
    }
}
