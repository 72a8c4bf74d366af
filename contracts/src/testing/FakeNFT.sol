// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title FakeNFT (test fixture)
/// @notice A contract that pretends to be an ERC-721 NFT contract for negative tests. It has no
///         tokens; it only answers the two calls BrokerRequests makes (`supportsInterface`,
///         `owner()`), in the way its `mode` selects. Anyone may reconfigure it.
contract FakeNFT {
    enum Mode {
        /// supportsInterface(ERC-721 / ERC-165) returns true, owner() returns claimedOwner.
        ClaimsERC721,
        /// supportsInterface returns false for everything.
        DeniesERC721,
        /// supportsInterface reverts.
        RevertsInSupportsInterface,
        /// supportsInterface returns empty return data (undecodable as bool).
        MalformedSupportsInterface,
        /// supportsInterface returns true, owner() reverts.
        OwnerReverts
    }

    /// @notice What owner() answers (typically someone other than the caller under test).
    address public claimedOwner;
    Mode public mode;

    constructor(address claimedOwner_, Mode mode_) {
        claimedOwner = claimedOwner_;
        mode = mode_;
    }

    function setClaimedOwner(address claimedOwner_) external {
        claimedOwner = claimedOwner_;
    }

    function setMode(Mode mode_) external {
        mode = mode_;
    }

    function supportsInterface(bytes4 interfaceId) external view returns (bool) {
        Mode m = mode;
        if (m == Mode.RevertsInSupportsInterface) revert("FakeNFT: supportsInterface reverts");
        if (m == Mode.MalformedSupportsInterface) {
            assembly ("memory-safe") {
                return(0, 0)
            }
        }
        if (m == Mode.DeniesERC721) return false;
        return interfaceId == 0x80ac58cd || interfaceId == 0x01ffc9a7;
    }

    function owner() external view returns (address) {
        if (mode == Mode.OwnerReverts) revert("FakeNFT: owner reverts");
        return claimedOwner;
    }
}
