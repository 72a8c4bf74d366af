// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {BrokerRequests} from "../BrokerRequests.sol";

/// @title HostileNFT (test fixture)
/// @notice Passes BrokerRequests' own checks (a staticcall from the contract, inside a
///         transaction that pays for its gas) and misbehaves for a broker that re-reads it with
///         `eth_call`: the attacks on a broker's NFT checks. `supportsInterface` is honest.
contract HostileNFT {
    enum Mode {
        /// owner() answers `claimedOwner` to a contract; to an outside call (an eth_call, where
        /// msg.sender is tx.origin) it loops until its gas runs out.
        GasLoop,
        /// owner() answers the `claimedOwner` word followed by HUGE_RETURN bytes of zeros
        /// (the contract reads only the first word).
        HugeReturn,
        /// owner() reverts when tx.gasprice is 0 (an eth_call's default), answers
        /// `claimedOwner` otherwise.
        RevertsForFreeCalls,
        /// owner() answers `claimedOwner`; destroy() self-destructs (see
        /// SelfDestructingRequester: since Cancun, only in the transaction that created it).
        SelfDestructs
    }

    /// @notice The bytes HugeReturn appends: 256 KiB (memory for it costs ~160k gas).
    uint256 public constant HUGE_RETURN = 256 * 1024;

    address public immutable claimedOwner;
    Mode public immutable mode;

    constructor(address claimedOwner_, Mode mode_) {
        claimedOwner = claimedOwner_;
        mode = mode_;
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x80ac58cd || interfaceId == 0x01ffc9a7;
    }

    function owner() external view returns (address) {
        address answer = claimedOwner;
        if (mode == Mode.GasLoop && msg.sender == tx.origin) {
            uint256 spins;
            while (gasleft() > 0) {
                spins++;
            }
        }
        if (mode == Mode.RevertsForFreeCalls && tx.gasprice == 0) {
            revert("HostileNFT: free calls revert");
        }
        if (mode == Mode.HugeReturn) {
            uint256 size = 32 + HUGE_RETURN;
            assembly ("memory-safe") {
                let ptr := mload(0x40)
                mstore(ptr, answer)
                return(ptr, size)
            }
        }
        return answer;
    }

    function destroy() external {
        selfdestruct(payable(msg.sender));
    }
}

/// @title SelfDestructingRequester (test fixture)
/// @notice In one transaction (its constructor): creates a HostileNFT it owns, submits a request
///         for it, and destroys it. Since Cancun a contract only loses its code when it
///         self-destructs in the transaction that created it, so this is how a request for an NFT
///         contract with no code left is made.
contract SelfDestructingRequester {
    uint256 public immutable requestId;
    address public immutable nft;

    constructor(BrokerRequests requests, bytes memory encryptedPayload) {
        HostileNFT created = new HostileNFT(address(this), HostileNFT.Mode.SelfDestructs);
        requestId = requests.submitRequest(address(created), encryptedPayload);
        created.destroy();
        nft = address(created);
    }
}
