// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IBrokerRequestsV1} from "../IBrokerRequestsV1.sol";

/// @title BrokerRequestsV1 (test fixture)
/// @notice A stand-in for the legacy V1 contracts in the field, so tests (Solidity and the Rust
///         integration tests on anvil) can exercise legacy monitoring. DO NOT DEPLOY for real
///         use: it reproduces V1 behaviour, including its lack of capacity accounting.
/// @dev Behaviour of V1: a duplicate request for an NFT contract with a current request reverts
///      with "NFT contract already has a request"; `markExpired` expires stale pending requests
///      and clears the mapping; `releaseAllocation` only clears the mapping.
contract BrokerRequestsV1 is IBrokerRequestsV1, Ownable {
    bytes4 private constant ERC721_INTERFACE_ID = 0x80ac58cd;

    Request[] public requests;
    mapping(address => uint256) public nftContractToRequestId;
    mapping(address => uint256[]) public requesterToRequestIds;
    uint256 public requestExpirationTime = 24 hours;

    constructor() Ownable(msg.sender) {}

    function owner() public view override(IBrokerRequestsV1, Ownable) returns (address) {
        return super.owner();
    }

    function submitRequest(address nftContract, bytes calldata encryptedPayload)
        external
        returns (uint256 requestId)
    {
        require(nftContract != address(0), "Invalid NFT contract address");
        require(encryptedPayload.length > 0, "Empty payload");
        require(nftContractToRequestId[nftContract] == 0, "NFT contract already has a request");
        require(nftContract.code.length > 0, "NFT contract does not exist");
        require(_supportsERC721(nftContract), "Not an ERC721 contract");
        require(_ownerOf(nftContract) == msg.sender, "Sender does not own NFT contract");

        requestId = requests.length + 1;
        requests.push(
            Request({
                id: requestId,
                requester: msg.sender,
                nftContract: nftContract,
                encryptedPayload: encryptedPayload,
                status: RequestStatus.Pending,
                responsePayload: "",
                submittedAt: block.timestamp,
                respondedAt: 0
            })
        );
        nftContractToRequestId[nftContract] = requestId;
        requesterToRequestIds[msg.sender].push(requestId);
        emit RequestSubmitted(requestId, msg.sender, nftContract, encryptedPayload);
    }

    function submitResponse(uint256 requestId, bytes calldata encryptedPayload) external onlyOwner {
        require(requestId > 0 && requestId <= requests.length, "Invalid request ID");
        Request storage request = requests[requestId - 1];
        require(request.status == RequestStatus.Pending, "Request not pending");
        require(!_isPastExpiry(request), "Request expired");
        require(encryptedPayload.length > 0, "Response requires payload");

        request.status = RequestStatus.Approved;
        request.responsePayload = encryptedPayload;
        request.respondedAt = block.timestamp;
        emit ResponseSubmitted(requestId, RequestStatus.Approved, encryptedPayload);
    }

    function markExpired(uint256[] calldata requestIds) external {
        for (uint256 i = 0; i < requestIds.length; ++i) {
            uint256 requestId = requestIds[i];
            if (requestId == 0 || requestId > requests.length) continue;
            Request storage request = requests[requestId - 1];
            if (request.status == RequestStatus.Pending && _isPastExpiry(request)) {
                request.status = RequestStatus.Expired;
                request.respondedAt = block.timestamp;
                if (nftContractToRequestId[request.nftContract] == requestId) {
                    delete nftContractToRequestId[request.nftContract];
                }
                emit RequestExpired(requestId);
            }
        }
    }

    function releaseAllocation(address nftContract) external onlyOwner {
        require(nftContractToRequestId[nftContract] != 0, "No allocation for this NFT contract");
        delete nftContractToRequestId[nftContract];
    }

    function setRequestExpirationTime(uint256 newExpirationTime) external onlyOwner {
        require(newExpirationTime >= 1 hours, "Expiration time too short");
        require(newExpirationTime <= 7 days, "Expiration time too long");
        requestExpirationTime = newExpirationTime;
    }

    function getRequest(uint256 requestId) external view returns (Request memory) {
        require(requestId > 0 && requestId <= requests.length, "Invalid request ID");
        return requests[requestId - 1];
    }

    function getRequestCount() external view returns (uint256) {
        return requests.length;
    }

    function _isPastExpiry(Request storage request) private view returns (bool) {
        // forge-lint: disable-next-line(block-timestamp)
        return block.timestamp > request.submittedAt + requestExpirationTime;
    }

    function _supportsERC721(address nftContract) private view returns (bool) {
        (bool ok, bytes memory ret) =
            nftContract.staticcall(abi.encodeWithSelector(0x01ffc9a7, ERC721_INTERFACE_ID));
        return ok && ret.length >= 32 && abi.decode(ret, (uint256)) == 1;
    }

    function _ownerOf(address nftContract) private view returns (address) {
        (bool ok, bytes memory ret) = nftContract.staticcall(abi.encodeWithSelector(0x8da5cb5b));
        if (!ok || ret.length < 32) return address(0);
        uint256 word = abi.decode(ret, (uint256));
        // forge-lint: disable-next-line(unsafe-typecast)
        return word >> 160 == 0 ? address(uint160(word)) : address(0);
    }
}
