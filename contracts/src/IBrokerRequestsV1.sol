// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title IBrokerRequestsV1
/// @notice Read (and drive) interface of the legacy V1 BrokerRequests contracts still deployed
///         in the field, which the broker keeps monitoring as `legacy_requests_contracts`.
/// @dev V1 is V2 without overwrite and capacity: a second `submitRequest` for an NFT contract
///      with a current request reverts with "NFT contract already has a request", and there is
///      no `totalCapacity`, `_activeCount`, `_pendingCount`, `setTotalCapacity`,
///      `getAvailableCapacity`, `releaseOwnAllocation` or `AllocationReleased`. The request
///      struct, the enum, the events and every other signature are identical to V2, so the
///      same decoding applies.
interface IBrokerRequestsV1 {
    enum RequestStatus {
        Pending,
        Approved,
        Rejected,
        Expired
    }

    struct Request {
        uint256 id;
        address requester;
        address nftContract;
        bytes encryptedPayload;
        RequestStatus status;
        bytes responsePayload;
        uint256 submittedAt;
        uint256 respondedAt;
    }

    event RequestSubmitted(
        uint256 indexed requestId, address indexed requester, address indexed nftContract, bytes encryptedPayload
    );
    event ResponseSubmitted(uint256 indexed requestId, RequestStatus status, bytes encryptedPayload);
    event RequestExpired(uint256 indexed requestId);

    /// @notice The operator key that may answer requests.
    function owner() external view returns (address);

    /// @notice Public getter of the `requests` array (the struct's members, in order).
    function requests(uint256 index)
        external
        view
        returns (
            uint256 id,
            address requester,
            address nftContract,
            bytes memory encryptedPayload,
            RequestStatus status,
            bytes memory responsePayload,
            uint256 submittedAt,
            uint256 respondedAt
        );

    function nftContractToRequestId(address nftContract) external view returns (uint256);

    function requesterToRequestIds(address requester, uint256 index) external view returns (uint256);

    function requestExpirationTime() external view returns (uint256);

    function getRequest(uint256 requestId) external view returns (Request memory);

    function getRequestCount() external view returns (uint256);

    function submitRequest(address nftContract, bytes calldata encryptedPayload) external returns (uint256 requestId);

    function submitResponse(uint256 requestId, bytes calldata encryptedPayload) external;

    function markExpired(uint256[] calldata requestIds) external;

    function releaseAllocation(address nftContract) external;

    function setRequestExpirationTime(uint256 newExpirationTime) external;
}
