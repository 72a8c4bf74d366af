// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title BrokerRequests (V2)
/// @notice Allocation requests for one IPv6 tunnel broker. Each broker deploys its own
///         instance, owned by its operator key; BlockHost servers submit ECIES-encrypted
///         requests on behalf of their NFT contract and the broker answers on-chain.
/// @dev ## Requests and the "current" request of an NFT contract
///      Request ids are 1-based and equal to the array position + 1. `nftContractToRequestId`
///      names the *current* request of an NFT contract (0 = none). The contract maintains:
///
///      - (I1) a current request is always `Pending` or `Approved`: every transition to
///        `Expired` (time-out, overwrite, release) removes the request from the mapping or
///        replaces it in the same call;
///      - (I2) every `Pending` request is current (so nothing can expire or answer a request
///        that no longer counts, which is how the old double decrement happened);
///      - (I3) `_pendingCount` / `_activeCount` equal the number of current requests that are
///        `Pending` / `Approved`, so `_activeCount + _pendingCount` is the number of NFT
///        contracts holding (or waiting for) an allocation. Each transition adjusts exactly one
///        counter, exactly once, according to the status the request leaves.
///
///      ## Capacity and stale pending requests
///      A never-answered request must not pin capacity forever (otherwise anyone could fill a
///      broker with cheap fake NFTs). All pending requests sit in a FIFO queue (a doubly linked
///      list over request ids, O(1) insert and removal). Since the expiry deadline is
///      `submittedAt + requestExpirationTime` with one global expiration time and ids grow with
///      time, the pending requests past their deadline ("stale") are always a prefix of that
///      queue. Hence:
///
///      - `submitRequest` for an NFT contract without a current request, when `totalCapacity`
///        is set and fully used, first expires stale requests from the head of the queue (at
///        most `MAX_LAZY_EXPIRATIONS` = 16 per call, each emitting `RequestExpired`) and then
///        reverts with "No capacity available" if the broker is still full. An overwrite (the
///        NFT contract already has a current request) adds no load and is never refused for
///        capacity.
///      - `getAvailableCapacity` subtracts the stale prefix (looking at most
///        `MAX_LAZY_EXPIRATIONS` entries deep) from the counters, so it reports exactly the room
///        a new submission would find: it is > 0 if and only if such a submission passes the
///        capacity check. It is floored at 0 and never underflows.
///      - `markExpired` (anyone) expires any stale request explicitly, with no depth limit
///        beyond the caller's gas.
///
///      The counters themselves stay status-based (a stale request still counts in
///      `_pendingCount` until something marks it `Expired`), which keeps I3 exact.
///
///      ## Releasing an allocation
///      `releaseAllocation` (broker owner) and `releaseOwnAllocation` (the NFT contract's
///      `owner()`) both end the NFT contract's current request (Pending or Approved), mark it
///      `Expired`, clear the mapping and emit `AllocationReleased`.
///
///      `respondedAt` records the time of a request's last status change (approval, expiry,
///      overwrite or release).
contract BrokerRequests is Ownable {
    /// @notice Request lifecycle. `Rejected` is never assigned: rejections are silent (the
    ///         broker does not answer and the request expires). Kept for ABI stability.
    enum RequestStatus {
        Pending,
        Approved,
        Rejected,
        Expired
    }

    /// @notice One request. The field order is the ABI tuple order that clients decode.
    struct Request {
        uint256 id;
        /// @dev The wallet that submitted the request (the NFT contract's owner at the time).
        address requester;
        /// @dev The BlockHost server's NFT contract; authoritative (not the payload's copy).
        address nftContract;
        /// @dev ECIES ciphertext of the request JSON, for the broker's key.
        bytes encryptedPayload;
        RequestStatus status;
        /// @dev Framed ECIES response (8-byte big-endian request id || ciphertext).
        bytes responsePayload;
        uint256 submittedAt;
        uint256 respondedAt;
    }

    /// @dev ERC-165 interface id of ERC-721.
    bytes4 private constant ERC721_INTERFACE_ID = 0x80ac58cd;
    /// @dev `supportsInterface(bytes4)` selector.
    bytes4 private constant SUPPORTS_INTERFACE_SELECTOR = 0x01ffc9a7;
    /// @dev `owner()` selector.
    bytes4 private constant OWNER_SELECTOR = 0x8da5cb5b;
    /// @dev How deep one call looks into the queue for stale pending requests.
    uint256 private constant MAX_LAZY_EXPIRATIONS = 16;
    /// @dev Low 128 bits of a queue link word.
    uint256 private constant LOW_MASK = type(uint128).max;

    /// @notice All requests; request `id` lives at index `id - 1`.
    Request[] public requests;

    /// @notice NFT contract => its current request id (0 = none). See I1.
    mapping(address => uint256) public nftContractToRequestId;

    /// @notice Requester => ids of every request it submitted, in order.
    mapping(address => uint256[]) public requesterToRequestIds;

    /// @notice Seconds a request may stay pending (1 hour .. 7 days, default 24 hours).
    uint256 public requestExpirationTime = 24 hours;

    /// @notice Maximum number of concurrent allocations plus pending requests (0 = unlimited).
    uint256 public totalCapacity;

    /// @notice Number of NFT contracts whose current request is Approved.
    uint256 public _activeCount;

    /// @notice Number of NFT contracts whose current request is Pending (stale ones included
    ///         until they are marked Expired).
    uint256 public _pendingCount;

    /// @dev Oldest and newest pending request ids (0 = queue empty).
    uint128 private _queueHead;
    uint128 private _queueTail;
    /// @dev Pending request id => (previous id << 128) | next id, 0 = none.
    mapping(uint256 => uint256) private _queueLinks;

    event RequestSubmitted(
        uint256 indexed requestId, address indexed requester, address indexed nftContract, bytes encryptedPayload
    );
    event ResponseSubmitted(uint256 indexed requestId, RequestStatus status, bytes encryptedPayload);
    event RequestExpired(uint256 indexed requestId);
    /// @notice An NFT contract's current request (and so its allocation, if it was approved)
    ///         was released on-chain. `by` is the broker owner (`releaseAllocation`) or the NFT
    ///         contract's owner (`releaseOwnAllocation`). The broker daemon frees the prefix.
    event AllocationReleased(uint256 indexed requestId, address indexed nftContract, address indexed by);

    constructor() Ownable(msg.sender) {}

    // ------------------------------------------------------------------ clients

    /// @notice Submits an allocation request for `nftContract`, whose `owner()` must be the
    ///         caller, and returns its id.
    /// @dev Checks, in order: non-zero address, non-empty payload, code at the address,
    ///      ERC-165 `supportsInterface(0x80ac58cd)` returning true (a revert or malformed answer
    ///      counts as false), `owner()` returning exactly `msg.sender`.
    ///      If the NFT contract already has a current request it is overwritten: marked
    ///      `Expired` (its counter adjusted) and replaced; this never fails for capacity.
    ///      Otherwise the request adds load: with `totalCapacity` set it needs a free slot,
    ///      after lazily expiring stale pending requests (see the contract notes), else the call
    ///      reverts with "No capacity available".
    function submitRequest(address nftContract, bytes calldata encryptedPayload)
        external
        returns (uint256 requestId)
    {
        require(nftContract != address(0), "Invalid NFT contract address");
        require(encryptedPayload.length > 0, "Empty payload");
        require(nftContract.code.length > 0, "NFT contract does not exist");
        require(_supportsERC721(nftContract), "Not an ERC721 contract");
        require(_isNftOwner(nftContract, msg.sender), "Sender does not own NFT contract");

        uint256 previousId = nftContractToRequestId[nftContract];
        if (previousId != 0) {
            _retire(previousId);
        } else if (totalCapacity != 0) {
            _reserveCapacity();
        }

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
        _pendingCount += 1;
        _enqueue(requestId);

        emit RequestSubmitted(requestId, msg.sender, nftContract, encryptedPayload);
    }

    /// @notice Releases the caller's own allocation: the caller must be `owner()` of
    ///         `nftContract`. Ends the NFT contract's current request (Pending or Approved),
    ///         frees its capacity and emits `AllocationReleased(requestId, nftContract, caller)`.
    /// @dev Reverts with "Sender does not own NFT contract" or "No allocation for this NFT
    ///      contract". Ownership is checked now, not at submission: whoever owns the NFT
    ///      contract today may release it.
    function releaseOwnAllocation(address nftContract) external {
        require(_isNftOwner(nftContract, msg.sender), "Sender does not own NFT contract");
        _release(nftContract);
    }

    /// @notice Expires each listed request that is Pending and past
    ///         `submittedAt + requestExpirationTime`; ids out of range and requests in any other
    ///         state are skipped silently. Callable by anyone. Emits `RequestExpired` per request.
    function markExpired(uint256[] calldata requestIds) external {
        uint256 count = requests.length;
        for (uint256 i = 0; i < requestIds.length; ++i) {
            uint256 requestId = requestIds[i];
            if (requestId == 0 || requestId > count) continue;
            Request storage request = requests[requestId - 1];
            if (request.status == RequestStatus.Pending && _isPastExpiry(request)) {
                _expire(requestId, request);
            }
        }
    }

    // ------------------------------------------------------------------ broker (owner)

    /// @notice Approves a request with the framed, encrypted response (owner only).
    /// @dev Only for a Pending, unexpired request with a non-empty payload that is still the
    ///      NFT contract's current request (supersession guard; with I2 an overwritten request
    ///      is already Expired and fails the Pending check first). Emits
    ///      `ResponseSubmitted(requestId, Approved, payload)`.
    function submitResponse(uint256 requestId, bytes calldata encryptedPayload) external onlyOwner {
        require(requestId > 0 && requestId <= requests.length, "Invalid request ID");
        Request storage request = requests[requestId - 1];
        require(request.status == RequestStatus.Pending, "Request not pending");
        require(!_isPastExpiry(request), "Request expired");
        require(encryptedPayload.length > 0, "Response requires payload");
        require(nftContractToRequestId[request.nftContract] == requestId, "Request superseded");

        request.status = RequestStatus.Approved;
        request.responsePayload = encryptedPayload;
        request.respondedAt = block.timestamp;
        _pendingCount -= 1;
        _activeCount += 1;
        _dequeue(requestId);

        emit ResponseSubmitted(requestId, RequestStatus.Approved, encryptedPayload);
    }

    /// @notice Releases `nftContract`'s allocation (owner only): ends its current request
    ///         (Pending or Approved), frees its capacity, clears the mapping and emits
    ///         `AllocationReleased(requestId, nftContract, owner)`.
    /// @dev Reverts with "No allocation for this NFT contract" when there is no current request.
    ///      The released request is marked Expired, so a later `markExpired` cannot touch the
    ///      counters again.
    function releaseAllocation(address nftContract) external onlyOwner {
        _release(nftContract);
    }

    /// @notice Sets how long a request may stay pending: between 1 hour and 7 days (owner only).
    function setRequestExpirationTime(uint256 newExpirationTime) external onlyOwner {
        require(newExpirationTime >= 1 hours, "Expiration time too short");
        require(newExpirationTime <= 7 days, "Expiration time too long");
        requestExpirationTime = newExpirationTime;
    }

    /// @notice Sets the capacity, 0 = unlimited (owner only). Lowering it below the current use
    ///         is allowed: existing requests stay, new NFT contracts are refused until use drops.
    function setTotalCapacity(uint256 newTotalCapacity) external onlyOwner {
        totalCapacity = newTotalCapacity;
    }

    // ------------------------------------------------------------------ views

    /// @notice Room for new NFT contracts: `type(uint256).max` when unlimited, otherwise
    ///         `totalCapacity - (_activeCount + _pendingCount - stale)`, floored at 0, where
    ///         `stale` counts pending requests already past their expiry (oldest first, looking
    ///         at most 16 deep). A value > 0 means a new `submitRequest` passes the capacity check.
    function getAvailableCapacity() external view returns (uint256) {
        uint256 capacity = totalCapacity;
        if (capacity == 0) return type(uint256).max;
        uint256 used = _activeCount + _pendingCount;
        uint256 stale = 0;
        uint256 id = _queueHead;
        while (id != 0 && stale < MAX_LAZY_EXPIRATIONS && _isPastExpiry(requests[id - 1])) {
            ++stale;
            id = _queueLinks[id] & LOW_MASK;
        }
        // stale <= _pendingCount <= used: the queue holds exactly the pending requests (I2, I3).
        used = used > stale ? used - stale : 0;
        return used >= capacity ? 0 : capacity - used;
    }

    /// @notice Returns request `requestId` (1-based); reverts outside 1..getRequestCount().
    function getRequest(uint256 requestId) external view returns (Request memory) {
        require(requestId > 0 && requestId <= requests.length, "Invalid request ID");
        return requests[requestId - 1];
    }

    /// @notice Number of requests ever submitted.
    function getRequestCount() external view returns (uint256) {
        return requests.length;
    }

    // ------------------------------------------------------------------ internals

    function _isPastExpiry(Request storage request) private view returns (bool) {
        // Deadlines are hours to days long; a few seconds of proposer skew do not matter.
        // forge-lint: disable-next-line(block-timestamp)
        return block.timestamp > request.submittedAt + requestExpirationTime;
    }

    /// @dev Makes room for one more request or reverts. Only called with `totalCapacity != 0`.
    function _reserveCapacity() private {
        uint256 capacity = totalCapacity;
        uint256 used = _activeCount + _pendingCount;
        for (uint256 i = 0; used >= capacity && i < MAX_LAZY_EXPIRATIONS; ++i) {
            uint256 head = _queueHead;
            if (head == 0) break;
            Request storage oldest = requests[head - 1];
            if (!_isPastExpiry(oldest)) break;
            _expire(head, oldest);
            --used;
        }
        require(used < capacity, "No capacity available");
    }

    /// @dev Pending (current, by I2) -> Expired by time-out.
    function _expire(uint256 requestId, Request storage request) private {
        request.status = RequestStatus.Expired;
        request.respondedAt = block.timestamp;
        _pendingCount -= 1;
        _dequeue(requestId);
        delete nftContractToRequestId[request.nftContract];
        emit RequestExpired(requestId);
    }

    /// @dev Current request (Pending or Approved, by I1) -> Expired, adjusting its counter. The
    ///      caller replaces or clears the mapping.
    function _retire(uint256 requestId) private {
        Request storage request = requests[requestId - 1];
        if (request.status == RequestStatus.Pending) {
            _pendingCount -= 1;
            _dequeue(requestId);
        } else {
            _activeCount -= 1;
        }
        request.status = RequestStatus.Expired;
        request.respondedAt = block.timestamp;
    }

    function _release(address nftContract) private {
        uint256 requestId = nftContractToRequestId[nftContract];
        require(requestId != 0, "No allocation for this NFT contract");
        _retire(requestId);
        delete nftContractToRequestId[nftContract];
        emit AllocationReleased(requestId, nftContract, msg.sender);
    }

    /// @dev Appends a new (largest) pending id to the queue. Request ids are array positions
    ///      + 1, far below 2**128, so the uint128 casts below cannot truncate.
    function _enqueue(uint256 requestId) private {
        uint256 tail = _queueTail;
        if (tail == 0) {
            // forge-lint: disable-next-line(unsafe-typecast)
            _queueHead = uint128(requestId);
        } else {
            _queueLinks[tail] |= requestId; // the tail's next link was 0
            _queueLinks[requestId] = tail << 128;
        }
        // forge-lint: disable-next-line(unsafe-typecast)
        _queueTail = uint128(requestId);
    }

    /// @dev Unlinks a pending id from anywhere in the queue.
    function _dequeue(uint256 requestId) private {
        uint256 links = _queueLinks[requestId];
        uint256 prev = links >> 128;
        uint256 next = links & LOW_MASK;
        if (prev == 0) {
            // forge-lint: disable-next-line(unsafe-typecast)
            _queueHead = uint128(next);
        } else {
            _queueLinks[prev] = (_queueLinks[prev] & ~LOW_MASK) | next;
        }
        if (next == 0) {
            // forge-lint: disable-next-line(unsafe-typecast)
            _queueTail = uint128(prev);
        } else {
            _queueLinks[next] = (prev << 128) | (_queueLinks[next] & LOW_MASK);
        }
        if (links != 0) delete _queueLinks[requestId];
    }

    /// @dev ERC-165 check that treats a revert, a short answer or anything but `true` as false
    ///      (a try/catch would still revert on undecodable return data). Reads one word only.
    function _supportsERC721(address nftContract) private view returns (bool supported) {
        bytes4 selector = SUPPORTS_INTERFACE_SELECTOR;
        bytes4 interfaceId = ERC721_INTERFACE_ID;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, selector)
            mstore(add(ptr, 0x04), interfaceId)
            let ok := staticcall(gas(), nftContract, ptr, 0x24, 0x00, 0x20)
            supported := and(ok, and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1)))
        }
    }

    /// @dev True when `owner()` on `nftContract` succeeds and returns exactly `account`.
    function _isNftOwner(address nftContract, address account) private view returns (bool isOwner) {
        bytes4 selector = OWNER_SELECTOR;
        assembly ("memory-safe") {
            mstore(0x00, selector)
            let ok := staticcall(gas(), nftContract, 0x00, 0x04, 0x00, 0x20)
            isOwner := and(ok, and(gt(returndatasize(), 0x1f), eq(mload(0x00), and(account, 0xffffffffffffffffffffffffffffffffffffffff))))
        }
    }
}
