// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IBrokerRequestsV1} from "../src/IBrokerRequestsV1.sol";
import {BrokerRequestsV1} from "../src/legacy/BrokerRequestsV1.sol";
import {BrokerRequests} from "../src/BrokerRequests.sol";
import {TestNFT} from "../src/testing/TestNFT.sol";

/// @notice The legacy V1 fixture behaves like V1 and is readable through IBrokerRequestsV1,
///         whose shared signatures are identical to V2's.
contract BrokerRequestsV1Test is Test {
    IBrokerRequestsV1 internal v1;
    TestNFT internal nft;
    address internal broker = makeAddr("broker");
    address internal server = makeAddr("server");
    address internal stranger = makeAddr("stranger");
    bytes internal constant PAYLOAD = hex"04aa";
    bytes internal constant RESPONSE = hex"0000000000000001bb";

    function setUp() public {
        vm.warp(1_700_000_000);
        vm.prank(broker);
        v1 = IBrokerRequestsV1(address(new BrokerRequestsV1()));
        nft = new TestNFT(server);
    }

    function _submit() internal returns (uint256 id) {
        vm.prank(server);
        id = v1.submitRequest(address(nft), PAYLOAD);
    }

    function _one(uint256 id) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = id;
    }

    function test_interfaceSharesV2Signatures() public pure {
        assertEq(IBrokerRequestsV1.submitRequest.selector, BrokerRequests.submitRequest.selector);
        assertEq(IBrokerRequestsV1.submitResponse.selector, BrokerRequests.submitResponse.selector);
        assertEq(IBrokerRequestsV1.markExpired.selector, BrokerRequests.markExpired.selector);
        assertEq(IBrokerRequestsV1.releaseAllocation.selector, BrokerRequests.releaseAllocation.selector);
        assertEq(IBrokerRequestsV1.getRequest.selector, BrokerRequests.getRequest.selector);
        assertEq(IBrokerRequestsV1.getRequestCount.selector, BrokerRequests.getRequestCount.selector);
        assertEq(
            IBrokerRequestsV1.setRequestExpirationTime.selector, BrokerRequests.setRequestExpirationTime.selector
        );
        assertEq(IBrokerRequestsV1.requests.selector, bytes4(keccak256("requests(uint256)")));
        assertEq(IBrokerRequestsV1.RequestSubmitted.selector, BrokerRequests.RequestSubmitted.selector);
        assertEq(IBrokerRequestsV1.ResponseSubmitted.selector, BrokerRequests.ResponseSubmitted.selector);
        assertEq(IBrokerRequestsV1.RequestExpired.selector, BrokerRequests.RequestExpired.selector);
    }

    function test_submitAndRespond() public {
        vm.expectEmit(address(v1));
        emit IBrokerRequestsV1.RequestSubmitted(1, server, address(nft), PAYLOAD);
        uint256 id = _submit();
        assertEq(id, 1);
        assertEq(v1.owner(), broker);
        assertEq(v1.nftContractToRequestId(address(nft)), 1);
        assertEq(v1.requesterToRequestIds(server, 0), 1);
        assertEq(v1.requestExpirationTime(), 24 hours);

        vm.expectEmit(address(v1));
        emit IBrokerRequestsV1.ResponseSubmitted(1, IBrokerRequestsV1.RequestStatus.Approved, RESPONSE);
        vm.prank(broker);
        v1.submitResponse(id, RESPONSE);

        IBrokerRequestsV1.Request memory r = v1.getRequest(id);
        assertEq(uint8(r.status), 1);
        assertEq(r.responsePayload, RESPONSE);
        (uint256 rid, address requester, address nftc,, IBrokerRequestsV1.RequestStatus status,,,) = v1.requests(0);
        assertEq(rid, 1);
        assertEq(requester, server);
        assertEq(nftc, address(nft));
        assertEq(uint8(status), 1);
        assertEq(v1.getRequestCount(), 1);
    }

    function test_duplicateRequestReverts() public {
        _submit();
        vm.prank(server);
        vm.expectRevert("NFT contract already has a request");
        v1.submitRequest(address(nft), PAYLOAD);
    }

    function test_hasNoCapacityFunctions() public {
        (bool ok,) = address(v1).staticcall(abi.encodeCall(BrokerRequests.getAvailableCapacity, ()));
        assertFalse(ok);
        (ok,) = address(v1).staticcall(abi.encodeWithSignature("totalCapacity()"));
        assertFalse(ok);
    }

    function test_releaseAllowsANewRequest() public {
        uint256 id = _submit();
        vm.prank(broker);
        v1.releaseAllocation(address(nft));
        assertEq(v1.nftContractToRequestId(address(nft)), 0);
        assertEq(uint8(v1.getRequest(id).status), 0, "V1 release leaves the status alone");
        assertEq(_submit(), 2);
    }

    function test_releaseReverts() public {
        vm.prank(broker);
        vm.expectRevert("No allocation for this NFT contract");
        v1.releaseAllocation(address(nft));
        _submit();
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        v1.releaseAllocation(address(nft));
    }

    function test_markExpired() public {
        uint256 id = _submit();
        vm.warp(block.timestamp + 24 hours + 1);
        vm.expectEmit(address(v1));
        emit IBrokerRequestsV1.RequestExpired(id);
        v1.markExpired(_one(id));
        assertEq(uint8(v1.getRequest(id).status), 3);
        assertEq(v1.nftContractToRequestId(address(nft)), 0);
    }

    function test_submitChecks() public {
        vm.startPrank(server);
        vm.expectRevert("Invalid NFT contract address");
        v1.submitRequest(address(0), PAYLOAD);
        vm.expectRevert("Empty payload");
        v1.submitRequest(address(nft), "");
        vm.expectRevert("NFT contract does not exist");
        v1.submitRequest(stranger, PAYLOAD);
        vm.expectRevert("Not an ERC721 contract");
        v1.submitRequest(address(v1), PAYLOAD);
        vm.stopPrank();
        vm.prank(stranger);
        vm.expectRevert("Sender does not own NFT contract");
        v1.submitRequest(address(nft), PAYLOAD);
    }

    function test_responseChecks() public {
        uint256 id = _submit();
        vm.startPrank(broker);
        vm.expectRevert("Invalid request ID");
        v1.submitResponse(2, RESPONSE);
        vm.expectRevert("Response requires payload");
        v1.submitResponse(id, "");
        vm.warp(block.timestamp + 24 hours + 1);
        vm.expectRevert("Request expired");
        v1.submitResponse(id, RESPONSE);
        vm.stopPrank();
    }

    function test_setRequestExpirationTime() public {
        vm.startPrank(broker);
        v1.setRequestExpirationTime(2 hours);
        assertEq(v1.requestExpirationTime(), 2 hours);
        vm.expectRevert("Expiration time too short");
        v1.setRequestExpirationTime(59 minutes);
        vm.expectRevert("Expiration time too long");
        v1.setRequestExpirationTime(8 days);
        vm.stopPrank();
    }
}
