// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {stdError} from "forge-std/StdError.sol";
import {BrokerRequests} from "../src/BrokerRequests.sol";
import {TestNFT} from "../src/testing/TestNFT.sol";
import {BrokerRequestsFixture} from "./BrokerRequests.t.sol";

/// @dev Exposes the address derivation of the payload data contracts and the revert table.
contract DataAddressHarness is BrokerRequests {
    function dataAddress(uint256 nonce) external view returns (address) {
        return _dataAddress(nonce);
    }

    function reasons() external pure returns (uint256[15] memory) {
        return [
            ERR_INVALID_NFT_CONTRACT,
            ERR_EMPTY_PAYLOAD,
            ERR_PAYLOAD_TOO_LARGE,
            ERR_NFT_CONTRACT_MISSING,
            ERR_NOT_ERC721,
            ERR_NOT_NFT_OWNER,
            ERR_INVALID_REQUEST_ID,
            ERR_NOT_PENDING,
            ERR_EXPIRED,
            ERR_EMPTY_RESPONSE,
            ERR_SUPERSEDED,
            ERR_EXPIRATION_TOO_SHORT,
            ERR_EXPIRATION_TOO_LONG,
            ERR_NO_CAPACITY,
            ERR_NO_ALLOCATION
        ];
    }

    function fail(uint256 reason) external pure {
        _fail(reason);
    }
}

/// @notice The packed storage behind the unchanged ABI (issue 15): payloads kept as the code of
///         data contracts at addresses derived from CREATE nonces, the packed requester lists,
///         the getters that replace the deployed V2's public state, and the new size limit.
contract BrokerRequestsStorageTest is BrokerRequestsFixture {
    uint256 internal constant MAX_REQUEST_PAYLOAD = 24_576 - 41;
    uint256 internal constant MAX_RESPONSE_PAYLOAD = 24_576 - 1;

    // ------------------------------------------------------------------ data contract addresses

    /// Every RLP length class of a nonce (one byte below 0x80, then 1..5 bytes) against forge's
    /// own CREATE address computation.
    function test_dataAddress_matchesCreateAtEveryNonceLength() public {
        DataAddressHarness h = new DataAddressHarness();
        uint256[14] memory nonces = [
            uint256(1),
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x10000,
            0xffffff,
            0x1000000,
            0xffffffff,
            0x100000000,
            0xffffffffff - 1,
            0xffffffffff,
            0x123456789a
        ];
        for (uint256 i = 0; i < nonces.length; ++i) {
            assertEq(h.dataAddress(nonces[i]), vm.computeCreateAddress(address(h), nonces[i]), vm.toString(nonces[i]));
        }
    }

    function testFuzz_dataAddress_matchesCreate(uint256 nonce) public {
        nonce = bound(nonce, 1, (1 << 40) - 1);
        DataAddressHarness h = new DataAddressHarness();
        assertEq(h.dataAddress(nonce), vm.computeCreateAddress(address(h), nonce));
    }

    /// The request's data contract gets nonce 1, the response's nonce 2: the code is the STOP
    /// byte, then requester, NFT contract and payload (request) or the payload (response).
    function test_dataContracts_holdThePayloadsBehindAStop() public {
        _submit(address(nft), server);
        _approve(1);

        address requestData = vm.computeCreateAddress(address(requests), 1);
        address responseData = vm.computeCreateAddress(address(requests), 2);
        assertEq(requestData.code, abi.encodePacked(hex"00", server, address(nft), PAYLOAD));
        assertEq(responseData.code, abi.encodePacked(hex"00", RESPONSE));
        assertEq(vm.getNonce(address(requests)), 3);

        // A call to a data contract stops at once: no effect, nothing returned.
        (bool ok, bytes memory out) = requestData.call(hex"deadbeef");
        assertTrue(ok);
        assertEq(out.length, 0);
    }

    /// Nonces interleave across requests and responses; each request still reads its own.
    function test_getRequest_readsInterleavedDataContracts() public {
        address nft2 = _newNft(server2);
        _submit(address(nft), server); // nonce 1
        vm.prank(server2);
        requests.submitRequest(nft2, PAYLOAD2); // nonce 2
        vm.prank(broker);
        requests.submitResponse(2, hex"0000000000000002aa"); // nonce 3
        _approve(1); // nonce 4
        _submit(address(nft), server); // nonce 5, overwrites request 1

        BrokerRequests.Request memory r1 = requests.getRequest(1);
        BrokerRequests.Request memory r2 = requests.getRequest(2);
        BrokerRequests.Request memory r3 = requests.getRequest(3);
        assertEq(r1.encryptedPayload, PAYLOAD);
        assertEq(r1.responsePayload, RESPONSE);
        assertEq(uint8(r1.status), EXPIRED);
        assertEq(r2.requester, server2);
        assertEq(r2.nftContract, nft2);
        assertEq(r2.encryptedPayload, PAYLOAD2);
        assertEq(r2.responsePayload, hex"0000000000000002aa");
        assertEq(uint8(r2.status), APPROVED);
        assertEq(r3.encryptedPayload, PAYLOAD);
        assertEq(r3.responsePayload.length, 0);
        assertEq(uint8(r3.status), PENDING);
        assertEq(vm.getNonce(address(requests)), 6);
    }

    /// Payloads of any size up to the limit come back byte for byte, through both getters.
    function testFuzz_payloadsRoundTrip(uint256 requestLength, uint256 responseLength, uint256 seed) public {
        requestLength = bound(requestLength, 1, 2_000);
        responseLength = bound(responseLength, 1, 2_000);
        bytes memory request = _bytes(requestLength, seed);
        bytes memory response = _bytes(responseLength, ~seed);
        vm.prank(server);
        requests.submitRequest(address(nft), request);
        vm.prank(broker);
        requests.submitResponse(1, response);

        BrokerRequests.Request memory r = requests.getRequest(1);
        assertEq(r.encryptedPayload, request);
        assertEq(r.responsePayload, response);
        (,,, bytes memory fromArray,, bytes memory responseFromArray,,) = requests.requests(0);
        assertEq(fromArray, request);
        assertEq(responseFromArray, response);
    }

    // ------------------------------------------------------------------ revert reasons

    /// Every entry of the revert table gives exactly the revert data of `require(false, text)`,
    /// with the deployed contract's texts (some cannot be reached by a call: the supersession
    /// guard is implied by invariant I2).
    function test_revertReasons_areTheDeployedTextsAsErrorString() public {
        DataAddressHarness h = new DataAddressHarness();
        string[15] memory texts = [
            "Invalid NFT contract address",
            "Empty payload",
            "Payload too large",
            "NFT contract does not exist",
            "Not an ERC721 contract",
            "Sender does not own NFT contract",
            "Invalid request ID",
            "Request not pending",
            "Request expired",
            "Response requires payload",
            "Request superseded",
            "Expiration time too short",
            "Expiration time too long",
            "No capacity available",
            "No allocation for this NFT contract"
        ];
        uint256[15] memory reasons = h.reasons();
        for (uint256 i = 0; i < texts.length; ++i) {
            (bool ok, bytes memory data) = address(h).call(abi.encodeCall(h.fail, (reasons[i])));
            assertFalse(ok);
            assertEq(data, abi.encodeWithSignature("Error(string)", texts[i]), texts[i]);
        }
    }

    // ------------------------------------------------------------------ size limit (EIP-170)

    function test_submitRequest_acceptsTheLargestPayload() public {
        bytes memory payload = _bytes(MAX_REQUEST_PAYLOAD, 1);
        vm.prank(server);
        requests.submitRequest(address(nft), payload);
        assertEq(requests.getRequest(1).encryptedPayload, payload);
    }

    function test_submitRequest_revertsForTooLargePayload() public {
        bytes memory payload = _bytes(MAX_REQUEST_PAYLOAD + 1, 1);
        vm.prank(server);
        vm.expectRevert("Payload too large");
        requests.submitRequest(address(nft), payload);
    }

    function test_submitResponse_acceptsTheLargestPayload() public {
        _submit(address(nft), server);
        bytes memory payload = _bytes(MAX_RESPONSE_PAYLOAD, 2);
        vm.prank(broker);
        requests.submitResponse(1, payload);
        assertEq(requests.getRequest(1).responsePayload, payload);
    }

    function test_submitResponse_revertsForTooLargePayload() public {
        _submit(address(nft), server);
        bytes memory payload = _bytes(MAX_RESPONSE_PAYLOAD + 1, 2);
        vm.prank(broker);
        vm.expectRevert("Payload too large");
        requests.submitResponse(1, payload);
        assertEq(_status(1), PENDING);
    }

    // ------------------------------------------------------------------ getters of the old public state

    function test_requests_revertsPastTheEndAsTheArrayGetterDid() public {
        vm.expectRevert(stdError.indexOOBError);
        requests.requests(0);
        _submit(address(nft), server);
        requests.requests(0);
        vm.expectRevert(stdError.indexOOBError);
        requests.requests(1);
    }

    function test_requests_returnsEveryField() public {
        vm.warp(START + 5);
        _submit(address(nft), server);
        vm.warp(START + 9);
        _approve(1);
        (
            uint256 id,
            address requester,
            address nftContract,
            bytes memory payload,
            BrokerRequests.RequestStatus status,
            bytes memory response,
            uint256 submittedAt,
            uint256 respondedAt
        ) = requests.requests(0);
        assertEq(id, 1);
        assertEq(requester, server);
        assertEq(nftContract, address(nft));
        assertEq(payload, PAYLOAD);
        assertEq(uint8(status), APPROVED);
        assertEq(response, RESPONSE);
        assertEq(submittedAt, START + 5);
        assertEq(respondedAt, START + 9);
    }

    /// Ids pack four to a word (the first word also holds the length): cross two word borders.
    function test_requesterToRequestIds_acrossWords() public {
        address nft2 = _newNft(server2);
        uint256[] memory expected = new uint256[](10);
        for (uint256 i = 0; i < 10; ++i) {
            _submit(_newNft(server), server); // ids 1, 3, 5, …: server2 interleaves
            expected[i] = 2 * i + 1;
            vm.prank(server2);
            requests.submitRequest(nft2, PAYLOAD2);
        }
        for (uint256 i = 0; i < 10; ++i) {
            assertEq(requests.requesterToRequestIds(server, i), expected[i]);
            assertEq(requests.requesterToRequestIds(server2, i), expected[i] + 1);
        }
        vm.expectRevert(stdError.indexOOBError);
        requests.requesterToRequestIds(server, 10);
        vm.expectRevert(stdError.indexOOBError);
        requests.requesterToRequestIds(stranger, 0);
    }

    /// The expiration time shares a word with the counters; the default needs no write.
    function test_requestExpirationTime_defaultAndChangesKeepTheCounters() public {
        assertEq(requests.requestExpirationTime(), 24 hours);
        _submit(address(nft), server);
        _submit(_newNft(server2), server2);
        _approve(2);
        vm.startPrank(broker);
        requests.setRequestExpirationTime(7 days);
        assertEq(requests.requestExpirationTime(), 7 days);
        requests.setRequestExpirationTime(1 hours);
        assertEq(requests.requestExpirationTime(), 1 hours);
        requests.setRequestExpirationTime(24 hours);
        assertEq(requests.requestExpirationTime(), 24 hours);
        vm.stopPrank();
        assertEq(requests._pendingCount(), 1);
        assertEq(requests._activeCount(), 1);
        assertEq(requests.getRequestCount(), 2);
    }

    function _bytes(uint256 length, uint256 seed) internal pure returns (bytes memory out) {
        out = new bytes(length);
        for (uint256 i = 0; i < length; i += 32) {
            bytes32 word = keccak256(abi.encode(seed, i));
            for (uint256 j = 0; j < 32 && i + j < length; ++j) {
                out[i + j] = word[j];
            }
        }
    }
}
