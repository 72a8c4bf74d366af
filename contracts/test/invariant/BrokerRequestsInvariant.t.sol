// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test, console} from "forge-std/Test.sol";
import {BrokerRequests} from "../../src/BrokerRequests.sol";
import {BrokerRequestsHandler} from "./BrokerRequestsHandler.sol";

/// @notice Counter invariants of BrokerRequests under random sequences of submit, overwrite,
///         respond, markExpired (with time warps), release by the broker, release by the NFT
///         owner, capacity and expiration changes and NFT ownership transfers.
contract BrokerRequestsInvariantTest is Test {
    BrokerRequests internal requests;
    BrokerRequestsHandler internal handler;
    address internal broker = makeAddr("broker");

    function setUp() public {
        vm.warp(1_700_000_000);
        vm.prank(broker);
        requests = new BrokerRequests();
        handler = new BrokerRequestsHandler(requests, broker);
        targetContract(address(handler));
    }

    /// `_activeCount + _pendingCount` (and each counter alone) equals the number of NFT
    /// contracts whose current request is Pending (Approved), read from the contract's state.
    function invariant_countersMatchCurrentRequests() public view {
        uint256 pending;
        uint256 approved;
        for (uint256 i = 0; i < handler.nftCount(); ++i) {
            address nft = handler.nfts(i);
            uint256 id = requests.nftContractToRequestId(nft);
            if (id == 0) continue;
            BrokerRequests.Request memory r = requests.getRequest(id);
            assertEq(r.nftContract, nft, "current request belongs to its NFT contract");
            if (r.status == BrokerRequests.RequestStatus.Pending) ++pending;
            else if (r.status == BrokerRequests.RequestStatus.Approved) ++approved;
            else revert("a current request is neither Pending nor Approved");
        }
        assertEq(requests._pendingCount(), pending, "_pendingCount");
        assertEq(requests._activeCount(), approved, "_activeCount");
        assertEq(requests._activeCount() + requests._pendingCount(), handler.modelUsed(), "model: used");
        assertEq(requests._pendingCount(), handler.modelPending(), "model: pending");
    }

    /// Every Pending request is its NFT contract's current request (so nothing can decrement a
    /// counter for a request that no longer counts), and every status matches the model.
    function invariant_requestsMatchTheModel() public view {
        uint256 count = requests.getRequestCount();
        assertEq(count, handler.modelCount(), "request count");
        for (uint256 id = 1; id <= count; ++id) {
            BrokerRequests.Request memory r = requests.getRequest(id);
            assertEq(uint8(r.status), handler.modelStatus(id), "status");
            if (r.status == BrokerRequests.RequestStatus.Pending) {
                assertEq(requests.nftContractToRequestId(r.nftContract), id, "pending request is current");
            }
        }
        for (uint256 i = 0; i < handler.nftCount(); ++i) {
            address nft = handler.nfts(i);
            assertEq(requests.nftContractToRequestId(nft), handler.modelCurrent(nft), "current request");
        }
    }

    /// getAvailableCapacity never reverts (no underflow), is floored at 0 and matches the
    /// model (stale pending requests do not count).
    function invariant_availableCapacity() public view {
        uint256 available = requests.getAvailableCapacity();
        assertEq(available, handler.modelAvailable(), "available capacity");
        uint256 capacity = requests.totalCapacity();
        if (capacity != 0) assertLe(available, capacity, "available <= capacity");
    }

    function afterInvariant() external view {
        string[13] memory names = [
            "submit.ok",
            "submit.overwrite",
            "submit.refused",
            "submit.lazyExpired",
            "respond.ok",
            "respond.refused",
            "markExpired.expired",
            "releaseByBroker.ok",
            "releaseByBroker.refused",
            "releaseByNftOwner.ok",
            "releaseByNftOwner.refused",
            "setCapacity",
            "warp"
        ];
        for (uint256 i = 0; i < names.length; ++i) {
            console.log(names[i], handler.calls(bytes32(bytes(names[i]))));
        }
    }
}
