// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {BrokerRequests} from "../src/BrokerRequests.sol";
import {TestNFT} from "../src/testing/TestNFT.sol";
import {FakeNFT} from "../src/testing/FakeNFT.sol";

/// @dev The Request tuple exactly as wire-protocol.md §2 lists it, independent of the contract.
struct WireRequest {
    uint256 id;
    address requester;
    address nftContract;
    bytes encryptedPayload;
    uint8 status;
    bytes responsePayload;
    uint256 submittedAt;
    uint256 respondedAt;
}

/// @dev Shared fixture: a broker-owned BrokerRequests and NFT contracts owned by `server`.
abstract contract BrokerRequestsFixture is Test {
    uint8 internal constant PENDING = 0;
    uint8 internal constant APPROVED = 1;
    uint8 internal constant REJECTED = 2;
    uint8 internal constant EXPIRED = 3;
    uint256 internal constant START = 1_700_000_000;

    BrokerRequests internal requests;
    TestNFT internal nft;

    address internal broker = makeAddr("broker");
    address internal server = makeAddr("server");
    address internal server2 = makeAddr("server2");
    address internal stranger = makeAddr("stranger");

    bytes internal constant PAYLOAD = hex"04deadbeef01020304";
    bytes internal constant PAYLOAD2 = hex"04cafe";
    bytes internal constant RESPONSE = hex"0000000000000001abcdef";

    function setUp() public virtual {
        vm.warp(START);
        vm.prank(broker);
        requests = new BrokerRequests();
        nft = new TestNFT(server);
    }

    function _status(uint256 id) internal view returns (uint8) {
        return uint8(requests.getRequest(id).status);
    }

    function _submit(address nftContract, address from) internal returns (uint256 id) {
        vm.prank(from);
        id = requests.submitRequest(nftContract, PAYLOAD);
    }

    /// @dev A fresh NFT contract (ERC-721 + Ownable) owned by `owner_`.
    function _newNft(address owner_) internal returns (address) {
        return address(new TestNFT(owner_));
    }

    function _approve(uint256 id) internal {
        vm.prank(broker);
        requests.submitResponse(id, RESPONSE);
    }

    function _ids(uint256 a) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = a;
    }

    function _ids(uint256 a, uint256 b) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](2);
        ids[0] = a;
        ids[1] = b;
    }

    function _used() internal view returns (uint256) {
        return requests._activeCount() + requests._pendingCount();
    }
}

contract BrokerRequestsTest is BrokerRequestsFixture {
    // ------------------------------------------------------------------ ABI (wire protocol §2)

    function test_abi_signaturesMatchTheWireProtocol() public view {
        assertEq(BrokerRequests.submitRequest.selector, bytes4(keccak256("submitRequest(address,bytes)")));
        assertEq(BrokerRequests.submitResponse.selector, bytes4(keccak256("submitResponse(uint256,bytes)")));
        assertEq(BrokerRequests.markExpired.selector, bytes4(keccak256("markExpired(uint256[])")));
        assertEq(BrokerRequests.releaseAllocation.selector, bytes4(keccak256("releaseAllocation(address)")));
        assertEq(
            BrokerRequests.setRequestExpirationTime.selector, bytes4(keccak256("setRequestExpirationTime(uint256)"))
        );
        assertEq(BrokerRequests.setTotalCapacity.selector, bytes4(keccak256("setTotalCapacity(uint256)")));
        assertEq(BrokerRequests.getAvailableCapacity.selector, bytes4(keccak256("getAvailableCapacity()")));
        assertEq(BrokerRequests.getRequest.selector, bytes4(keccak256("getRequest(uint256)")));
        assertEq(BrokerRequests.getRequestCount.selector, bytes4(keccak256("getRequestCount()")));
        assertEq(requests.requests.selector, bytes4(keccak256("requests(uint256)")));
        assertEq(requests.nftContractToRequestId.selector, bytes4(keccak256("nftContractToRequestId(address)")));
        assertEq(requests.requesterToRequestIds.selector, bytes4(keccak256("requesterToRequestIds(address,uint256)")));
        assertEq(requests.requestExpirationTime.selector, bytes4(keccak256("requestExpirationTime()")));
        assertEq(requests.totalCapacity.selector, bytes4(keccak256("totalCapacity()")));
        assertEq(requests._activeCount.selector, bytes4(keccak256("_activeCount()")));
        assertEq(requests._pendingCount.selector, bytes4(keccak256("_pendingCount()")));
        assertEq(
            BrokerRequests.RequestSubmitted.selector, keccak256("RequestSubmitted(uint256,address,address,bytes)")
        );
        assertEq(BrokerRequests.ResponseSubmitted.selector, keccak256("ResponseSubmitted(uint256,uint8,bytes)"));
        assertEq(BrokerRequests.RequestExpired.selector, keccak256("RequestExpired(uint256)"));
        // Additions (V2.1).
        assertEq(BrokerRequests.releaseOwnAllocation.selector, bytes4(keccak256("releaseOwnAllocation(address)")));
        assertEq(
            BrokerRequests.AllocationReleased.selector, keccak256("AllocationReleased(uint256,address,address)")
        );
        assertEq(uint8(BrokerRequests.RequestStatus.Pending), PENDING);
        assertEq(uint8(BrokerRequests.RequestStatus.Approved), APPROVED);
        assertEq(uint8(BrokerRequests.RequestStatus.Rejected), REJECTED);
        assertEq(uint8(BrokerRequests.RequestStatus.Expired), EXPIRED);
    }

    function test_getRequest_returnsTheStructInWireOrder() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 10);
        _approve(id);
        (bool ok, bytes memory ret) = address(requests).staticcall(abi.encodeCall(requests.getRequest, (id)));
        assertTrue(ok);
        WireRequest memory w = abi.decode(ret, (WireRequest));
        assertEq(w.id, 1);
        assertEq(w.requester, server);
        assertEq(w.nftContract, address(nft));
        assertEq(w.encryptedPayload, PAYLOAD);
        assertEq(w.status, APPROVED);
        assertEq(w.responsePayload, RESPONSE);
        assertEq(w.submittedAt, START);
        assertEq(w.respondedAt, START + 10);
    }

    function test_initialState() public view {
        assertEq(requests.owner(), broker);
        assertEq(requests.requestExpirationTime(), 24 hours);
        assertEq(requests.totalCapacity(), 0);
        assertEq(requests._activeCount(), 0);
        assertEq(requests._pendingCount(), 0);
        assertEq(requests.getRequestCount(), 0);
        assertEq(requests.getAvailableCapacity(), type(uint256).max);
    }

    // ------------------------------------------------------------------ submitRequest

    function test_submitRequest_storesRequestAndEmits() public {
        vm.expectEmit(address(requests));
        emit BrokerRequests.RequestSubmitted(1, server, address(nft), PAYLOAD);
        uint256 id = _submit(address(nft), server);

        assertEq(id, 1);
        assertEq(requests.getRequestCount(), 1);
        assertEq(requests.nftContractToRequestId(address(nft)), 1);
        assertEq(requests.requesterToRequestIds(server, 0), 1);
        assertEq(requests._pendingCount(), 1);
        assertEq(requests._activeCount(), 0);

        BrokerRequests.Request memory r = requests.getRequest(1);
        assertEq(r.id, 1);
        assertEq(r.requester, server);
        assertEq(r.nftContract, address(nft));
        assertEq(r.encryptedPayload, PAYLOAD);
        assertEq(uint8(r.status), PENDING);
        assertEq(r.responsePayload.length, 0);
        assertEq(r.submittedAt, START);
        assertEq(r.respondedAt, 0);

        (uint256 gid, address requester, address nftc, bytes memory payload, BrokerRequests.RequestStatus status,,,)
        = requests.requests(0);
        assertEq(gid, 1);
        assertEq(requester, server);
        assertEq(nftc, address(nft));
        assertEq(payload, PAYLOAD);
        assertEq(uint8(status), PENDING);
    }

    function test_submitRequest_idsFollowArrayPositions() public {
        address nft2 = _newNft(server2);
        assertEq(_submit(address(nft), server), 1);
        assertEq(_submit(nft2, server2), 2);
        assertEq(_submit(address(nft), server), 3);
        assertEq(requests.getRequest(3).id, 3);
        assertEq(requests.requesterToRequestIds(server, 1), 3);
        assertEq(requests.requesterToRequestIds(server2, 0), 2);
    }

    function test_submitRequest_revertsForZeroAddress() public {
        vm.prank(server);
        vm.expectRevert("Invalid NFT contract address");
        requests.submitRequest(address(0), PAYLOAD);
    }

    function test_submitRequest_revertsForEmptyPayload() public {
        vm.prank(server);
        vm.expectRevert("Empty payload");
        requests.submitRequest(address(nft), "");
    }

    function test_submitRequest_revertsForAddressWithoutCode() public {
        vm.prank(server);
        vm.expectRevert("NFT contract does not exist");
        requests.submitRequest(makeAddr("eoa"), PAYLOAD);
    }

    function test_submitRequest_revertsWhenERC165SaysNo() public {
        FakeNFT fake = new FakeNFT(server, FakeNFT.Mode.DeniesERC721);
        vm.prank(server);
        vm.expectRevert("Not an ERC721 contract");
        requests.submitRequest(address(fake), PAYLOAD);
    }

    function test_submitRequest_revertsWhenERC165Reverts() public {
        FakeNFT fake = new FakeNFT(server, FakeNFT.Mode.RevertsInSupportsInterface);
        vm.prank(server);
        vm.expectRevert("Not an ERC721 contract");
        requests.submitRequest(address(fake), PAYLOAD);
    }

    function test_submitRequest_revertsWhenERC165AnswerIsMalformed() public {
        FakeNFT fake = new FakeNFT(server, FakeNFT.Mode.MalformedSupportsInterface);
        vm.prank(server);
        vm.expectRevert("Not an ERC721 contract");
        requests.submitRequest(address(fake), PAYLOAD);
    }

    function test_submitRequest_revertsForContractWithoutSupportsInterface() public {
        // BrokerRequests itself has code but no supportsInterface (its fallback-less call reverts).
        vm.prank(broker);
        vm.expectRevert("Not an ERC721 contract");
        requests.submitRequest(address(requests), PAYLOAD);
    }

    function test_submitRequest_revertsForNonOwner() public {
        vm.prank(stranger);
        vm.expectRevert("Sender does not own NFT contract");
        requests.submitRequest(address(nft), PAYLOAD);
    }

    function test_submitRequest_revertsWhenFakeClaimsSomeoneElseAsOwner() public {
        FakeNFT fake = new FakeNFT(stranger, FakeNFT.Mode.ClaimsERC721);
        vm.prank(server);
        vm.expectRevert("Sender does not own NFT contract");
        requests.submitRequest(address(fake), PAYLOAD);
    }

    function test_submitRequest_revertsWhenOwnerReverts() public {
        FakeNFT fake = new FakeNFT(server, FakeNFT.Mode.OwnerReverts);
        vm.prank(server);
        vm.expectRevert("Sender does not own NFT contract");
        requests.submitRequest(address(fake), PAYLOAD);
    }

    function test_submitRequest_acceptsFakeThatPassesTheOnChainChecks() public {
        // The contract only checks ERC-165 and owner(); deeper validation is the broker's job.
        FakeNFT fake = new FakeNFT(server, FakeNFT.Mode.ClaimsERC721);
        assertEq(_submit(address(fake), server), 1);
    }

    function test_submitRequest_overwritesPendingRequest() public {
        uint256 first = _submit(address(nft), server);
        vm.warp(START + 100);
        vm.recordLogs();
        vm.prank(server);
        uint256 second = requests.submitRequest(address(nft), PAYLOAD2);

        assertEq(second, 2);
        assertEq(_status(first), EXPIRED);
        assertEq(requests.getRequest(first).respondedAt, START + 100);
        assertEq(_status(second), PENDING);
        assertEq(requests.getRequest(second).encryptedPayload, PAYLOAD2);
        assertEq(requests.nftContractToRequestId(address(nft)), second);
        assertEq(requests._pendingCount(), 1);
        assertEq(requests._activeCount(), 0);
        assertEq(vm.getRecordedLogs().length, 1, "only RequestSubmitted");
    }

    function test_submitRequest_overwritesApprovedRequest() public {
        uint256 first = _submit(address(nft), server);
        _approve(first);
        assertEq(requests._activeCount(), 1);
        uint256 second = _submit(address(nft), server);

        assertEq(_status(first), EXPIRED);
        assertEq(requests.getRequest(first).responsePayload, RESPONSE, "old response kept");
        assertEq(requests.nftContractToRequestId(address(nft)), second);
        assertEq(requests._activeCount(), 0);
        assertEq(requests._pendingCount(), 1);
    }

    function test_submitRequest_overwriteOfStalePendingRequest() public {
        uint256 first = _submit(address(nft), server);
        vm.warp(START + 2 days);
        uint256 second = _submit(address(nft), server);
        assertEq(_status(first), EXPIRED);
        assertEq(requests._pendingCount(), 1);
        assertEq(requests.nftContractToRequestId(address(nft)), second);
    }

    function test_submitRequest_newNftOwnerCanOverwriteOldOwnerCannot() public {
        _submit(address(nft), server);
        vm.prank(server);
        nft.transferOwnership(server2);

        vm.prank(server);
        vm.expectRevert("Sender does not own NFT contract");
        requests.submitRequest(address(nft), PAYLOAD);

        uint256 id = _submit(address(nft), server2);
        assertEq(requests.getRequest(id).requester, server2);
        assertEq(requests._pendingCount(), 1);
    }

    // ------------------------------------------------------------------ submitResponse

    function test_submitResponse_approvesAndEmits() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 30);
        vm.expectEmit(address(requests));
        emit BrokerRequests.ResponseSubmitted(id, BrokerRequests.RequestStatus.Approved, RESPONSE);
        _approve(id);

        BrokerRequests.Request memory r = requests.getRequest(id);
        assertEq(uint8(r.status), APPROVED);
        assertEq(r.responsePayload, RESPONSE);
        assertEq(r.respondedAt, START + 30);
        assertEq(requests._pendingCount(), 0);
        assertEq(requests._activeCount(), 1);
        assertEq(requests.nftContractToRequestId(address(nft)), id);
    }

    function test_submitResponse_emitsStatusOneOnTheWire() public {
        uint256 id = _submit(address(nft), server);
        vm.recordLogs();
        _approve(id);
        (uint8 status, bytes memory payload) = abi.decode(vm.getRecordedLogs()[0].data, (uint8, bytes));
        assertEq(status, 1);
        assertEq(payload, RESPONSE);
    }

    function test_submitResponse_revertsForNonOwner() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(server);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, server));
        requests.submitResponse(id, RESPONSE);
    }

    function test_submitResponse_revertsForInvalidId() public {
        _submit(address(nft), server);
        vm.startPrank(broker);
        vm.expectRevert("Invalid request ID");
        requests.submitResponse(0, RESPONSE);
        vm.expectRevert("Invalid request ID");
        requests.submitResponse(2, RESPONSE);
        vm.stopPrank();
    }

    function test_submitResponse_revertsWhenAlreadyApproved() public {
        uint256 id = _submit(address(nft), server);
        _approve(id);
        vm.prank(broker);
        vm.expectRevert("Request not pending");
        requests.submitResponse(id, RESPONSE);
    }

    function test_submitResponse_revertsWhenMarkedExpired() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 24 hours + 1);
        requests.markExpired(_ids(id));
        vm.prank(broker);
        vm.expectRevert("Request not pending");
        requests.submitResponse(id, RESPONSE);
    }

    function test_submitResponse_revertsWhenPastExpiry() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 24 hours + 1);
        vm.prank(broker);
        vm.expectRevert("Request expired");
        requests.submitResponse(id, RESPONSE);
    }

    function test_submitResponse_acceptedAtTheExactDeadline() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 24 hours);
        _approve(id);
        assertEq(_status(id), APPROVED);
    }

    function test_submitResponse_revertsForEmptyPayload() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(broker);
        vm.expectRevert("Response requires payload");
        requests.submitResponse(id, "");
    }

    function test_submitResponse_supersededRequestCannotBeAnswered() public {
        uint256 first = _submit(address(nft), server);
        uint256 second = _submit(address(nft), server);
        // The overwritten request is Expired already, so the Pending check fires before the
        // supersession guard; either way the stale answer never lands.
        vm.prank(broker);
        vm.expectRevert("Request not pending");
        requests.submitResponse(first, RESPONSE);
        _approve(second);
        assertEq(requests._activeCount(), 1);
        assertEq(requests._pendingCount(), 0);
    }

    function test_submitResponse_releasedPendingRequestCannotBeAnswered() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(broker);
        requests.releaseAllocation(address(nft));
        vm.prank(broker);
        vm.expectRevert("Request not pending");
        requests.submitResponse(id, RESPONSE);
    }

    // ------------------------------------------------------------------ markExpired

    function test_markExpired_beforeDeadlineIsANoOp() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 24 hours); // deadline itself: not yet past it
        vm.recordLogs();
        requests.markExpired(_ids(id));
        assertEq(_status(id), PENDING);
        assertEq(requests._pendingCount(), 1);
        assertEq(vm.getRecordedLogs().length, 0);
    }

    function test_markExpired_expiresPastDeadline() public {
        uint256 id = _submit(address(nft), server);
        vm.warp(START + 24 hours + 1);
        vm.expectEmit(address(requests));
        emit BrokerRequests.RequestExpired(id);
        vm.prank(stranger); // anyone may call it
        requests.markExpired(_ids(id));

        assertEq(_status(id), EXPIRED);
        assertEq(requests.getRequest(id).respondedAt, START + 24 hours + 1);
        assertEq(requests.nftContractToRequestId(address(nft)), 0);
        assertEq(requests._pendingCount(), 0);
        // The NFT contract may submit again afterwards.
        assertEq(_submit(address(nft), server), 2);
    }

    /// @dev Capacity griefing (issue 14 #9): the broker expires the requests it rejected
    ///      silently at once, so they stop counting against its capacity; nobody else can.
    function test_markExpired_theBrokerExpiresPendingRequestsAtOnce() public {
        vm.prank(broker);
        requests.setTotalCapacity(2);
        address nft2 = _newNft(server2);
        uint256 a = _submit(address(nft), server);
        uint256 b = _submit(nft2, server2);
        _approve(a);
        assertEq(requests.getAvailableCapacity(), 0);

        vm.prank(stranger);
        requests.markExpired(_ids(a, b));
        assertEq(_status(b), PENDING, "a stranger cannot expire early");

        vm.warp(START + 1);
        vm.expectEmit(address(requests));
        emit BrokerRequests.RequestExpired(b);
        vm.prank(broker);
        requests.markExpired(_ids(a, b));
        assertEq(_status(a), APPROVED, "an approved request is not the broker's to expire");
        assertEq(_status(b), EXPIRED);
        assertEq(requests.getRequest(b).respondedAt, START + 1);
        assertEq(requests.nftContractToRequestId(nft2), 0);
        assertEq(requests._pendingCount(), 0);
        assertEq(requests.getAvailableCapacity(), 1, "the capacity is free again");
        // Its submitter may try again.
        assertEq(_submit(nft2, server2), 3);
    }

    function test_markExpired_skipsInvalidApprovedAndExpiredIds() public {
        address nft2 = _newNft(server2);
        uint256 a = _submit(address(nft), server);
        uint256 b = _submit(nft2, server2);
        _approve(a);
        vm.warp(START + 3 days);
        uint256[] memory ids = new uint256[](5);
        (ids[0], ids[1], ids[2], ids[3], ids[4]) = (0, a, b, 99, type(uint256).max);
        requests.markExpired(ids);
        assertEq(_status(a), APPROVED);
        assertEq(_status(b), EXPIRED);
        assertEq(requests._activeCount(), 1);
        assertEq(requests._pendingCount(), 0);

        vm.recordLogs();
        requests.markExpired(ids); // everything already settled
        assertEq(vm.getRecordedLogs().length, 0);
        assertEq(requests._activeCount(), 1);
    }

    function test_markExpired_duplicateIdsDecrementOnce() public {
        address nft2 = _newNft(server2);
        uint256 a = _submit(address(nft), server);
        _submit(nft2, server2);
        vm.warp(START + 23 hours);
        uint256 c = _submit(address(_newNft(server)), server); // not yet stale at the call below
        vm.warp(START + 24 hours + 1);
        requests.markExpired(_ids(a, a));
        assertEq(requests._pendingCount(), 2);
        assertEq(_status(c), PENDING);
    }

    function test_markExpired_emptyListIsANoOp() public {
        requests.markExpired(new uint256[](0));
    }

    function test_markExpired_honoursChangedExpirationTime() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(broker);
        requests.setRequestExpirationTime(1 hours);
        vm.warp(START + 1 hours + 1);
        requests.markExpired(_ids(id));
        assertEq(_status(id), EXPIRED);
    }

    // ------------------------------------------------------------------ releaseAllocation (owner)

    function test_releaseAllocation_ofApprovedRequest() public {
        uint256 id = _submit(address(nft), server);
        _approve(id);
        vm.warp(START + 50);
        vm.expectEmit(address(requests));
        emit BrokerRequests.AllocationReleased(id, address(nft), broker);
        vm.prank(broker);
        requests.releaseAllocation(address(nft));

        assertEq(requests.nftContractToRequestId(address(nft)), 0);
        assertEq(_status(id), EXPIRED);
        assertEq(requests.getRequest(id).respondedAt, START + 50);
        assertEq(requests._activeCount(), 0);
        assertEq(requests._pendingCount(), 0);
    }

    function test_releaseAllocation_ofPendingRequest() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(broker);
        requests.releaseAllocation(address(nft));
        assertEq(_status(id), EXPIRED);
        assertEq(requests._pendingCount(), 0);
        assertEq(requests.nftContractToRequestId(address(nft)), 0);
    }

    function test_releaseAllocation_revertsWithoutAllocation() public {
        vm.prank(broker);
        vm.expectRevert("No allocation for this NFT contract");
        requests.releaseAllocation(address(nft));
    }

    function test_releaseAllocation_revertsWhenReleasedTwice() public {
        _submit(address(nft), server);
        vm.startPrank(broker);
        requests.releaseAllocation(address(nft));
        vm.expectRevert("No allocation for this NFT contract");
        requests.releaseAllocation(address(nft));
        vm.stopPrank();
    }

    function test_releaseAllocation_revertsForNonOwner() public {
        _submit(address(nft), server);
        vm.prank(server); // the NFT owner must use releaseOwnAllocation
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, server));
        requests.releaseAllocation(address(nft));
    }

    // ------------------------------------------------------------------ releaseOwnAllocation (NFT owner)

    function test_releaseOwnAllocation_byNftOwner() public {
        uint256 id = _submit(address(nft), server);
        _approve(id);
        vm.expectEmit(address(requests));
        emit BrokerRequests.AllocationReleased(id, address(nft), server);
        vm.prank(server);
        requests.releaseOwnAllocation(address(nft));
        assertEq(requests.nftContractToRequestId(address(nft)), 0);
        assertEq(_status(id), EXPIRED);
        assertEq(requests._activeCount(), 0);
    }

    function test_releaseOwnAllocation_ofPendingRequest() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(server);
        requests.releaseOwnAllocation(address(nft));
        assertEq(_status(id), EXPIRED);
        assertEq(requests._pendingCount(), 0);
    }

    function test_releaseOwnAllocation_revertsForStranger() public {
        _submit(address(nft), server);
        vm.prank(stranger);
        vm.expectRevert("Sender does not own NFT contract");
        requests.releaseOwnAllocation(address(nft));
    }

    function test_releaseOwnAllocation_revertsForBrokerOwner() public {
        _submit(address(nft), server);
        vm.prank(broker);
        vm.expectRevert("Sender does not own NFT contract");
        requests.releaseOwnAllocation(address(nft));
    }

    function test_releaseOwnAllocation_revertsWithoutAllocation() public {
        vm.prank(server);
        vm.expectRevert("No allocation for this NFT contract");
        requests.releaseOwnAllocation(address(nft));
    }

    function test_releaseOwnAllocation_revertsForAddressWithoutCode() public {
        vm.prank(server);
        vm.expectRevert("Sender does not own NFT contract");
        requests.releaseOwnAllocation(makeAddr("eoa"));
    }

    function test_releaseOwnAllocation_revertsWhenOwnerReverts() public {
        FakeNFT fake = new FakeNFT(server, FakeNFT.Mode.ClaimsERC721);
        _submit(address(fake), server);
        fake.setMode(FakeNFT.Mode.OwnerReverts);
        vm.prank(server);
        vm.expectRevert("Sender does not own NFT contract");
        requests.releaseOwnAllocation(address(fake));
    }

    function test_releaseOwnAllocation_followsOwnershipTransfers() public {
        _submit(address(nft), server);
        vm.prank(server);
        nft.transferOwnership(server2);

        vm.prank(server);
        vm.expectRevert("Sender does not own NFT contract");
        requests.releaseOwnAllocation(address(nft));

        vm.prank(server2);
        requests.releaseOwnAllocation(address(nft));
        assertEq(requests._pendingCount(), 0);
    }

    // ------------------------------------------------------------------ regressions (V2 bugs)

    /// The deployed V2 decremented `_pendingCount` in releaseAllocation and again in markExpired.
    function test_regression_releaseThenMarkExpiredCannotDoubleDecrement() public {
        address nft2 = _newNft(server2);
        uint256 a = _submit(address(nft), server);
        uint256 b = _submit(nft2, server2);
        vm.prank(broker);
        requests.releaseAllocation(address(nft));
        assertEq(requests._pendingCount(), 1);

        vm.warp(START + 2 days);
        vm.recordLogs();
        requests.markExpired(_ids(a));
        assertEq(vm.getRecordedLogs().length, 0, "a released request is not expired again");
        assertEq(requests._pendingCount(), 1, "b still counted once");
        assertEq(_status(b), PENDING);

        requests.markExpired(_ids(b, a));
        assertEq(requests._pendingCount(), 0);
        assertEq(requests._activeCount(), 0);
    }

    /// Same, through the NFT owner's release and through an overwrite.
    function test_regression_everyEndOfARequestAdjustsCountersOnce() public {
        uint256 a = _submit(address(nft), server);
        uint256 a2 = _submit(address(nft), server); // overwrite: a is retired
        vm.prank(server);
        requests.releaseOwnAllocation(address(nft)); // a2 is retired
        vm.warp(START + 2 days);
        requests.markExpired(_ids(a, a2));
        assertEq(requests._pendingCount(), 0);
        assertEq(requests._activeCount(), 0);
        assertEq(_submit(address(nft), server), 3);
        assertEq(requests._pendingCount(), 1);
    }

    /// The deployed V2 let never-answered requests hold capacity forever.
    function test_regression_neverAnsweredRequestsStopPinningCapacityAfterExpiry() public {
        vm.prank(broker);
        requests.setTotalCapacity(2);
        address fake1 = address(new FakeNFT(stranger, FakeNFT.Mode.ClaimsERC721));
        address fake2 = address(new FakeNFT(stranger, FakeNFT.Mode.ClaimsERC721));
        uint256 f1 = _submit(fake1, stranger);
        vm.warp(START + 10);
        uint256 f2 = _submit(fake2, stranger);
        assertEq(requests.getAvailableCapacity(), 0);

        vm.prank(server);
        vm.expectRevert("No capacity available");
        requests.submitRequest(address(nft), PAYLOAD);

        vm.warp(START + 24 hours + 1); // f1 is stale, f2 not yet
        assertEq(requests.getAvailableCapacity(), 1);
        vm.warp(START + 24 hours + 11); // both stale
        assertEq(requests.getAvailableCapacity(), 2);

        vm.expectEmit(address(requests));
        emit BrokerRequests.RequestExpired(f1);
        uint256 id = _submit(address(nft), server);

        assertEq(_status(f1), EXPIRED, "oldest stale request expired lazily");
        assertEq(_status(f2), PENDING, "only as many as needed");
        assertEq(requests._pendingCount(), 2);
        assertEq(requests.getAvailableCapacity(), 1, "f2 is stale and does not count");
        _approve(id);
        assertEq(requests._activeCount(), 1);
    }

    // ------------------------------------------------------------------ capacity

    function test_capacity_unlimitedByDefault() public {
        for (uint256 i = 0; i < 5; ++i) {
            _submit(_newNft(server), server);
        }
        assertEq(requests.getAvailableCapacity(), type(uint256).max);
    }

    function test_setTotalCapacity() public {
        vm.prank(broker);
        requests.setTotalCapacity(3);
        assertEq(requests.totalCapacity(), 3);
        assertEq(requests.getAvailableCapacity(), 3);
        vm.prank(broker);
        requests.setTotalCapacity(0);
        assertEq(requests.getAvailableCapacity(), type(uint256).max);
    }

    function test_setTotalCapacity_revertsForNonOwner() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        requests.setTotalCapacity(3);
    }

    function test_capacity_countsPendingAndApproved() public {
        vm.prank(broker);
        requests.setTotalCapacity(3);
        uint256 a = _submit(address(nft), server);
        assertEq(requests.getAvailableCapacity(), 2);
        _approve(a);
        assertEq(requests.getAvailableCapacity(), 2, "approval moves a slot from pending to active");
        _submit(_newNft(server2), server2);
        assertEq(requests.getAvailableCapacity(), 1);
    }

    function test_capacity_fullBrokerRefusesNewNftContracts() public {
        vm.prank(broker);
        requests.setTotalCapacity(1);
        _submit(address(nft), server);
        address nft2 = _newNft(server2);
        vm.prank(server2);
        vm.expectRevert("No capacity available");
        requests.submitRequest(nft2, PAYLOAD);
    }

    function test_capacity_overwriteIsNeverRefused() public {
        vm.prank(broker);
        requests.setTotalCapacity(1);
        uint256 a = _submit(address(nft), server);
        uint256 b = _submit(address(nft), server); // pending overwrite
        _approve(b);
        uint256 c = _submit(address(nft), server); // approved overwrite
        assertEq(c, 3);
        assertEq(_status(a), EXPIRED);
        assertEq(requests._pendingCount() + requests._activeCount(), 1);
        assertEq(requests.getAvailableCapacity(), 0);
    }

    function test_capacity_overwriteAllowedEvenWhenOverCapacity() public {
        _submit(address(nft), server);
        _submit(_newNft(server2), server2);
        vm.prank(broker);
        requests.setTotalCapacity(1); // now over capacity
        assertEq(requests.getAvailableCapacity(), 0);
        _submit(address(nft), server);
        assertEq(requests._pendingCount(), 2);
    }

    function test_capacity_releaseFreesASlot() public {
        vm.prank(broker);
        requests.setTotalCapacity(1);
        uint256 a = _submit(address(nft), server);
        _approve(a);
        assertEq(requests.getAvailableCapacity(), 0);
        vm.prank(server);
        requests.releaseOwnAllocation(address(nft));
        assertEq(requests.getAvailableCapacity(), 1);
        _submit(_newNft(server2), server2);
    }

    function test_capacity_loweredBelowUseFloorsAtZero() public {
        for (uint256 i = 0; i < 4; ++i) {
            _submit(_newNft(server), server);
        }
        vm.prank(broker);
        requests.setTotalCapacity(2);
        assertEq(requests.getAvailableCapacity(), 0);
        address extra = _newNft(server);
        vm.prank(server);
        vm.expectRevert("No capacity available");
        requests.submitRequest(extra, PAYLOAD);
    }

    function test_capacity_staleExpiredLazilyOnlyWhenNeeded() public {
        vm.prank(broker);
        requests.setTotalCapacity(5);
        uint256 a = _submit(address(nft), server);
        vm.warp(START + 2 days);
        _submit(_newNft(server2), server2); // room left: no lazy expiry
        assertEq(_status(a), PENDING);
        assertEq(requests.getAvailableCapacity(), 4, "a is stale and not counted");
    }

    function test_capacity_approvedRequestsAreNeverExpiredLazily() public {
        vm.prank(broker);
        requests.setTotalCapacity(1);
        uint256 a = _submit(address(nft), server);
        _approve(a);
        vm.warp(START + 7 days);
        address nft2 = _newNft(server2);
        vm.prank(server2);
        vm.expectRevert("No capacity available");
        requests.submitRequest(nft2, PAYLOAD);
        assertEq(_status(a), APPROVED);
    }

    function test_capacity_lazyExpirySkipsNothingInTheMiddle() public {
        // Pending a, approved b, pending c: the queue holds a and c only.
        vm.prank(broker);
        requests.setTotalCapacity(3);
        uint256 a = _submit(address(nft), server);
        uint256 b = _submit(_newNft(server), server);
        uint256 c = _submit(_newNft(server), server);
        _approve(b);
        vm.warp(START + 2 days);
        assertEq(requests.getAvailableCapacity(), 2);
        _submit(_newNft(server2), server2);
        assertEq(_status(a), EXPIRED);
        assertEq(_status(c), PENDING);
        _submit(_newNft(server2), server2);
        assertEq(_status(c), EXPIRED);
        assertEq(_status(b), APPROVED);
        assertEq(requests.getAvailableCapacity(), 0);
    }

    function test_capacity_lazyExpiryIsBoundedAndMarkExpiredFinishesTheJob() public {
        // 20 stale requests, capacity lowered to 2: one submission would need 19 lazy
        // expirations (bound: 16), so it is refused until someone calls markExpired.
        uint256[] memory ids = new uint256[](20);
        for (uint256 i = 0; i < 20; ++i) {
            ids[i] = _submit(_newNft(stranger), stranger);
        }
        vm.prank(broker);
        requests.setTotalCapacity(2);
        vm.warp(START + 2 days);
        assertEq(requests.getAvailableCapacity(), 0, "looks 16 deep: 20 - 16 = 4 >= 2");

        address nft2 = _newNft(server2);
        vm.prank(server2);
        vm.expectRevert("No capacity available");
        requests.submitRequest(nft2, PAYLOAD);

        uint256[] memory some = new uint256[](3);
        (some[0], some[1], some[2]) = (ids[0], ids[1], ids[2]);
        requests.markExpired(some);
        // 17 pending left, all stale; 16 visible -> 17 - 16 = 1 used, 1 available.
        assertEq(requests.getAvailableCapacity(), 1);
        _submit(nft2, server2);
        assertEq(requests._pendingCount(), 2, "16 expired lazily, plus the new one");
        assertEq(requests.getAvailableCapacity(), 1, "the remaining stale one does not count");
    }

    function test_capacity_expirationTimeChangeMovesTheStaleBoundary() public {
        vm.prank(broker);
        requests.setTotalCapacity(1);
        _submit(address(nft), server);
        vm.warp(START + 2 hours);
        assertEq(requests.getAvailableCapacity(), 0);
        vm.prank(broker);
        requests.setRequestExpirationTime(1 hours);
        assertEq(requests.getAvailableCapacity(), 1);
        vm.prank(broker);
        requests.setRequestExpirationTime(3 hours);
        assertEq(requests.getAvailableCapacity(), 0);
    }

    // ------------------------------------------------------------------ expiration time

    function test_setRequestExpirationTime_acceptsBounds() public {
        vm.startPrank(broker);
        requests.setRequestExpirationTime(1 hours);
        assertEq(requests.requestExpirationTime(), 1 hours);
        requests.setRequestExpirationTime(7 days);
        assertEq(requests.requestExpirationTime(), 7 days);
        vm.stopPrank();
    }

    function test_setRequestExpirationTime_revertsTooShort() public {
        vm.prank(broker);
        vm.expectRevert("Expiration time too short");
        requests.setRequestExpirationTime(1 hours - 1);
    }

    function test_setRequestExpirationTime_revertsTooLong() public {
        vm.prank(broker);
        vm.expectRevert("Expiration time too long");
        requests.setRequestExpirationTime(7 days + 1);
    }

    function test_setRequestExpirationTime_revertsForNonOwner() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        requests.setRequestExpirationTime(2 hours);
    }

    // ------------------------------------------------------------------ views and ownership

    function test_getRequest_revertsOutsideRange() public {
        vm.expectRevert("Invalid request ID");
        requests.getRequest(0);
        vm.expectRevert("Invalid request ID");
        requests.getRequest(1);
        _submit(address(nft), server);
        requests.getRequest(1);
        vm.expectRevert("Invalid request ID");
        requests.getRequest(2);
    }

    function test_transferOwnership_movesTheResponderRole() public {
        uint256 id = _submit(address(nft), server);
        vm.prank(broker);
        requests.transferOwnership(stranger);
        vm.prank(broker);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, broker));
        requests.submitResponse(id, RESPONSE);
        vm.prank(stranger);
        requests.submitResponse(id, RESPONSE);
        assertEq(_status(id), APPROVED);
    }

    // ------------------------------------------------------------------ fuzz

    function testFuzz_submitRequest_storesAnyPayload(bytes calldata payload) public {
        vm.assume(payload.length > 0);
        vm.prank(server);
        uint256 id = requests.submitRequest(address(nft), payload);
        assertEq(requests.getRequest(id).encryptedPayload, payload);
    }

    function testFuzz_submitResponse_storesAnyFramedPayload(uint64 requestIdOnWire, bytes calldata ciphertext)
        public
    {
        uint256 id = _submit(address(nft), server);
        bytes memory framed = abi.encodePacked(requestIdOnWire, ciphertext);
        vm.prank(broker);
        requests.submitResponse(id, framed);
        assertEq(requests.getRequest(id).responsePayload, framed);
    }

    function testFuzz_setRequestExpirationTime_bounds(uint256 t) public {
        vm.prank(broker);
        if (t < 1 hours) vm.expectRevert("Expiration time too short");
        else if (t > 7 days) vm.expectRevert("Expiration time too long");
        requests.setRequestExpirationTime(t);
    }

    function testFuzz_submitResponse_deadline(uint256 elapsed, uint256 expiration) public {
        expiration = bound(expiration, 1 hours, 7 days);
        elapsed = bound(elapsed, 0, 8 days);
        vm.prank(broker);
        requests.setRequestExpirationTime(expiration);
        uint256 id = _submit(address(nft), server);
        vm.warp(START + elapsed);
        vm.prank(broker);
        if (elapsed > expiration) vm.expectRevert("Request expired");
        requests.submitResponse(id, RESPONSE);
    }

    function testFuzz_capacity_admitsExactlyCapacityNewNfts(uint8 rawCapacity, uint8 rawSubmissions) public {
        uint256 capacity = bound(rawCapacity, 1, 12);
        uint256 submissions = bound(rawSubmissions, 0, 16);
        vm.prank(broker);
        requests.setTotalCapacity(capacity);
        uint256 accepted = 0;
        for (uint256 i = 0; i < submissions; ++i) {
            address n = _newNft(server);
            vm.prank(server);
            try requests.submitRequest(n, PAYLOAD) {
                ++accepted;
            } catch Error(string memory reason) {
                assertEq(reason, "No capacity available");
            }
            assertEq(requests.getAvailableCapacity(), capacity - accepted);
        }
        assertEq(accepted, submissions < capacity ? submissions : capacity);
        assertEq(_used(), accepted);
    }

    function testFuzz_capacity_staleRequestsFreeTheirSlots(uint8 rawCapacity, uint8 rawAnswered, uint32 wait)
        public
    {
        uint256 capacity = bound(rawCapacity, 1, 10);
        uint256 answered = bound(rawAnswered, 0, capacity);
        for (uint256 i = 0; i < capacity; ++i) {
            uint256 id = _submit(_newNft(server), server);
            if (i < answered) _approve(id);
        }
        vm.prank(broker);
        requests.setTotalCapacity(capacity);
        assertEq(requests.getAvailableCapacity(), 0);

        vm.warp(START + wait);
        bool stale = wait > 24 hours;
        uint256 expected = stale ? capacity - answered : 0;
        assertEq(requests.getAvailableCapacity(), expected);

        address n = _newNft(server2);
        vm.prank(server2);
        if (expected == 0) vm.expectRevert("No capacity available");
        requests.submitRequest(n, PAYLOAD);
        assertEq(requests._activeCount(), answered);
    }
}
