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
///
///      ## Storage (issue 15: gas)
///      Payload bytes dominated the cost (~22,100 gas per 32-byte slot), so each payload is
///      written once as the code of a small data contract (CREATE, 200 gas per byte, read back
///      with EXTCODECOPY): a request's data contract holds `0x00 ‖ requester ‖ nftContract ‖
///      encryptedPayload`, a response's `0x00 ‖ responsePayload` (the leading STOP makes a
///      call to it do nothing). Their addresses are not stored: they follow from this
///      contract's CREATE nonce (EIP-161: starts at 1, +1 per data contract, and a failed CREATE
///      reverts the whole call), which the record keeps in 40 bits. Everything else a request
///      needs is one packed word (`_records`), and the counters, queue ends, number of data
///      contracts and expiration time one more (`_header`), so a submission writes three new slots
///      (record, current-request mapping, the requester's id list) and a response none.
///      The public getters of the old layout (`requests`, `requesterToRequestIds`,
///      `requestExpirationTime`, `_activeCount`, `_pendingCount`) are functions with the same
///      signatures and results. Limits that follow: at most 2**36 - 1 requests, timestamps
///      below 2**48, payloads up to the EIP-170 code size (24,576 bytes with the prefix).
contract BrokerRequests is Ownable {
    /// @notice Request lifecycle. `Rejected` is never assigned: rejections are silent (the
    ///         broker does not answer and the request expires). Kept for ABI stability.
    enum RequestStatus {
        Pending,
        Approved,
        Rejected,
        Expired
    }

    /// @notice One request as `getRequest` returns it. The field order is the ABI tuple order
    ///         that clients decode. Not the storage layout (see the contract notes).
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

    /// @dev Ids, counters and queue links are 36-bit fields: 2**36 - 1 requests at ~130,000 gas
    ///      each is beyond any chain's lifetime, and the limit is checked anyway.
    uint256 private constant ID_MASK = (1 << 36) - 1;
    /// @dev A CREATE nonce: at most 1 + 2 * (2**36 - 1) (one data contract per request and
    ///      per response), so 40 bits.
    uint256 private constant NONCE_MASK = (1 << 40) - 1;
    uint256 private constant TIME_MASK = (1 << 48) - 1;
    uint256 private constant STATUS_MASK = 0xff;

    // `_header` fields (bit offsets).
    uint256 private constant H_COUNT = 0;
    uint256 private constant H_PENDING = 36;
    uint256 private constant H_ACTIVE = 72;
    uint256 private constant H_HEAD = 108;
    uint256 private constant H_TAIL = 144;
    /// @dev Data contracts created so far (40 bits): the next CREATE nonce is one more, since a
    ///      contract's nonce starts at 1 (EIP-161).
    uint256 private constant H_CREATED = 180;
    /// @dev requestExpirationTime XOR 24 hours (36 bits; at most 7 days), so that the all-zero
    ///      word of a new contract means the default and the constructor writes nothing: a
    ///      slot written there costs the deployment 22,100 gas.
    uint256 private constant H_EXPIRATION = 220;
    uint256 private constant DEFAULT_EXPIRATION = 24 hours;
    /// @dev One more pending / approved request in the header's counters. No carry can leave a
    ///      field: each counter stays <= the request count < 2**36.
    uint256 private constant ONE_PENDING = 2 ** H_PENDING;
    uint256 private constant ONE_ACTIVE = 2 ** H_ACTIVE;

    // `_records[id]` fields (bit offsets).
    uint256 private constant R_STATUS = 0;
    uint256 private constant R_SUBMITTED = 8;
    uint256 private constant R_RESPONDED = 56;
    /// @dev Queue links (pending requests only; 0 = none).
    uint256 private constant R_PREV = 104;
    uint256 private constant R_NEXT = 140;
    /// @dev CREATE nonces of the request's and the response's data contracts (0 = none).
    uint256 private constant R_REQUEST_DATA = 176;
    uint256 private constant R_RESPONSE_DATA = 216;
    uint256 private constant R_LINKS = (ID_MASK << R_PREV) | (ID_MASK << R_NEXT);

    /// @dev EIP-170 limit on a data contract's code, and the bytes in front of a payload.
    uint256 private constant MAX_CODE_SIZE = 24_576;
    uint256 private constant REQUEST_DATA_PREFIX = 41; // STOP, requester, nftContract
    uint256 private constant RESPONSE_DATA_PREFIX = 1; // STOP

    /// @dev Panic codes: a field would overflow (2**36 requests, a timestamp past 2**48), and an
    ///      index past the end of a getter's array (what the deployed V2's getters reverted with).
    uint256 private constant PANIC_OVERFLOW = 0x11;
    uint256 private constant PANIC_OUT_OF_BOUNDS = 0x32;

    /// @dev Revert reasons: `offset * 256 + length` into `REVERT_REASONS` (internal only so that
    ///      a test harness can check every entry). The strings are the
    ///      deployed contract's (clients and tests match them); kept once in one table because
    ///      a `require` with its own string literal at each site made the code 0.6 kB larger,
    ///      which priced the deployment above the deployed V2's.
    string private constant REVERT_REASONS =
        "Invalid NFT contract addressEmpty payloadPayload too largeNFT contract does not existNot an ERC721 contractSender does not own NFT contractInvalid request IDRequest not pendingRequest expiredResponse requires payloadRequest supersededExpiration time too shortExpiration time too longNo capacity availableNo allocation for this NFT contract";
    uint256 internal constant ERR_INVALID_NFT_CONTRACT = 0 * 256 + 28; // "Invalid NFT contract address"
    uint256 internal constant ERR_EMPTY_PAYLOAD = 28 * 256 + 13; // "Empty payload"
    uint256 internal constant ERR_PAYLOAD_TOO_LARGE = 41 * 256 + 17; // "Payload too large"
    uint256 internal constant ERR_NFT_CONTRACT_MISSING = 58 * 256 + 27; // "NFT contract does not exist"
    uint256 internal constant ERR_NOT_ERC721 = 85 * 256 + 22; // "Not an ERC721 contract"
    uint256 internal constant ERR_NOT_NFT_OWNER = 107 * 256 + 32; // "Sender does not own NFT contract"
    uint256 internal constant ERR_INVALID_REQUEST_ID = 139 * 256 + 18; // "Invalid request ID"
    uint256 internal constant ERR_NOT_PENDING = 157 * 256 + 19; // "Request not pending"
    uint256 internal constant ERR_EXPIRED = 176 * 256 + 15; // "Request expired"
    uint256 internal constant ERR_EMPTY_RESPONSE = 191 * 256 + 25; // "Response requires payload"
    uint256 internal constant ERR_SUPERSEDED = 216 * 256 + 18; // "Request superseded"
    uint256 internal constant ERR_EXPIRATION_TOO_SHORT = 234 * 256 + 25; // "Expiration time too short"
    uint256 internal constant ERR_EXPIRATION_TOO_LONG = 259 * 256 + 24; // "Expiration time too long"
    uint256 internal constant ERR_NO_CAPACITY = 283 * 256 + 21; // "No capacity available"
    uint256 internal constant ERR_NO_ALLOCATION = 304 * 256 + 35; // "No allocation for this NFT contract"

    /// @dev Request count, pending/active counters, queue head and tail, data contracts created
    ///      and expiration time: read by every call, written once per call.
    uint256 private _header;

    /// @notice Maximum number of concurrent allocations plus pending requests (0 = unlimited).
    uint256 public totalCapacity;

    /// @notice NFT contract => its current request id (0 = none). See I1.
    mapping(address => uint256) public nftContractToRequestId;

    /// @dev Request id => status, submittedAt, respondedAt, queue links, data contract nonces.
    mapping(uint256 => uint256) private _records;

    /// @dev Requester => its request ids, four 64-bit lanes per word; lane 0 of word 0 is the
    ///      length, so a requester's first three ids cost one new slot.
    mapping(address => mapping(uint256 => uint256)) private _requesterIdWords;

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
    /// @dev Checks, in order: non-zero address, non-empty payload, payload size (at most
    ///      24,535 bytes: "Payload too large"), code at the address, ERC-165
    ///      `supportsInterface(0x80ac58cd)` returning true (a revert or malformed answer counts
    ///      as false), `owner()` returning exactly `msg.sender`.
    ///      If the NFT contract already has a current request it is overwritten: marked
    ///      `Expired` (its counter adjusted) and replaced; this never fails for capacity.
    ///      Otherwise the request adds load: with `totalCapacity` set it needs a free slot,
    ///      after lazily expiring stale pending requests (see the contract notes), else the call
    ///      reverts with "No capacity available".
    function submitRequest(address nftContract, bytes calldata encryptedPayload) external returns (uint256 requestId) {
        if (nftContract == address(0)) _fail(ERR_INVALID_NFT_CONTRACT);
        if (encryptedPayload.length == 0) _fail(ERR_EMPTY_PAYLOAD);
        if (encryptedPayload.length > MAX_CODE_SIZE - REQUEST_DATA_PREFIX) _fail(ERR_PAYLOAD_TOO_LARGE);
        if (nftContract.code.length == 0) _fail(ERR_NFT_CONTRACT_MISSING);
        if (!_supportsERC721(nftContract)) _fail(ERR_NOT_ERC721);
        if (!_isNftOwner(nftContract, msg.sender)) _fail(ERR_NOT_NFT_OWNER);

        uint256 header = _header;
        uint256 previousId = nftContractToRequestId[nftContract];
        if (previousId != 0) {
            header = _retire(header, previousId);
        } else if (totalCapacity != 0) {
            header = _reserveCapacity(header);
        }

        requestId = _field(header, H_COUNT, ID_MASK) + 1;
        if (requestId > ID_MASK) _panic(PANIC_OVERFLOW);
        uint256 nonce = _field(header, H_CREATED, NONCE_MASK) + 1;
        _createRequestData(msg.sender, nftContract, encryptedPayload);

        // Enqueue: the new (largest) id becomes the tail.
        uint256 tail = _field(header, H_TAIL, ID_MASK);
        if (tail == 0) {
            header = _setField(header, H_HEAD, ID_MASK, requestId);
        } else {
            _records[tail] |= requestId << R_NEXT; // the tail's next link was 0
        }
        _records[requestId] = (uint256(RequestStatus.Pending) << R_STATUS) | (_now() << R_SUBMITTED) | (tail << R_PREV)
            | (nonce << R_REQUEST_DATA);

        header = _setField(header, H_COUNT, ID_MASK, requestId);
        header = _setField(header, H_TAIL, ID_MASK, requestId);
        header = _setField(header, H_CREATED, NONCE_MASK, nonce);
        header += ONE_PENDING;
        _header = header;

        nftContractToRequestId[nftContract] = requestId;
        _pushRequesterId(msg.sender, requestId);

        emit RequestSubmitted(requestId, msg.sender, nftContract, encryptedPayload);
    }

    /// @notice Releases the caller's own allocation: the caller must be `owner()` of
    ///         `nftContract`. Ends the NFT contract's current request (Pending or Approved),
    ///         frees its capacity and emits `AllocationReleased(requestId, nftContract, caller)`.
    /// @dev Reverts with "Sender does not own NFT contract" or "No allocation for this NFT
    ///      contract". Ownership is checked now, not at submission: whoever owns the NFT
    ///      contract today may release it.
    function releaseOwnAllocation(address nftContract) external {
        if (!_isNftOwner(nftContract, msg.sender)) _fail(ERR_NOT_NFT_OWNER);
        _release(nftContract);
    }

    /// @notice Expires each listed request that is Pending and past
    ///         `submittedAt + requestExpirationTime` — or, called by the broker (owner), each
    ///         listed Pending request at once: the ones it rejected silently, so that throwaway
    ///         NFT contracts cannot hold its capacity for a whole expiration time. Ids out of
    ///         range and requests in any other state are skipped silently. Callable by anyone.
    ///         Emits `RequestExpired` per request.
    function markExpired(uint256[] calldata requestIds) external {
        uint256 header = _header;
        uint256 count = _field(header, H_COUNT, ID_MASK);
        bool broker = msg.sender == owner();
        for (uint256 i = 0; i < requestIds.length; ++i) {
            uint256 requestId = requestIds[i];
            if (requestId == 0 || requestId > count) continue;
            uint256 record = _records[requestId];
            if (_status(record) == RequestStatus.Pending && (broker || _isPastExpiry(record, header))) {
                header = _expire(header, requestId, record);
            }
        }
        _header = header;
    }

    // ------------------------------------------------------------------ broker (owner)

    /// @notice Approves a request with the framed, encrypted response (owner only).
    /// @dev Only for a Pending, unexpired request with a non-empty payload (at most 24,575
    ///      bytes: "Payload too large") that is still the NFT contract's current request
    ///      (supersession guard; with I2 an overwritten request is already Expired and fails the
    ///      Pending check first). Emits `ResponseSubmitted(requestId, Approved, payload)`.
    function submitResponse(uint256 requestId, bytes calldata encryptedPayload) external onlyOwner {
        uint256 header = _header;
        if (requestId == 0 || requestId > _field(header, H_COUNT, ID_MASK)) _fail(ERR_INVALID_REQUEST_ID);
        uint256 record = _records[requestId];
        if (_status(record) != RequestStatus.Pending) _fail(ERR_NOT_PENDING);
        if (_isPastExpiry(record, header)) _fail(ERR_EXPIRED);
        if (encryptedPayload.length == 0) _fail(ERR_EMPTY_RESPONSE);
        if (encryptedPayload.length > MAX_CODE_SIZE - RESPONSE_DATA_PREFIX) _fail(ERR_PAYLOAD_TOO_LARGE);
        if (nftContractToRequestId[_nftContractOf(record)] != requestId) _fail(ERR_SUPERSEDED);

        uint256 nonce = _field(header, H_CREATED, NONCE_MASK) + 1;
        _createResponseData(encryptedPayload);

        (header, record) = _dequeue(header, record);
        record = _setField(record, R_STATUS, STATUS_MASK, uint256(RequestStatus.Approved));
        record = _setField(record, R_RESPONDED, TIME_MASK, _now());
        _records[requestId] = record | (nonce << R_RESPONSE_DATA);

        header = _setField(header, H_CREATED, NONCE_MASK, nonce);
        header -= ONE_PENDING; // this request was counted as pending (I3)
        header += ONE_ACTIVE;
        _header = header;

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
        if (newExpirationTime < 1 hours) _fail(ERR_EXPIRATION_TOO_SHORT);
        if (newExpirationTime > 7 days) _fail(ERR_EXPIRATION_TOO_LONG);
        _header = _setField(_header, H_EXPIRATION, ID_MASK, newExpirationTime ^ DEFAULT_EXPIRATION);
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
        uint256 header = _header;
        uint256 used = _field(header, H_ACTIVE, ID_MASK) + _field(header, H_PENDING, ID_MASK);
        uint256 stale = 0;
        uint256 id = _field(header, H_HEAD, ID_MASK);
        while (id != 0 && stale < MAX_LAZY_EXPIRATIONS) {
            uint256 record = _records[id];
            if (!_isPastExpiry(record, header)) break;
            ++stale;
            id = _field(record, R_NEXT, ID_MASK);
        }
        // stale <= _pendingCount <= used: the queue holds exactly the pending requests (I2, I3).
        used = used > stale ? used - stale : 0;
        return used >= capacity ? 0 : capacity - used;
    }

    /// @notice Returns request `requestId` (1-based); reverts outside 1..getRequestCount().
    function getRequest(uint256 requestId) external view returns (Request memory) {
        if (requestId == 0 || requestId > _field(_header, H_COUNT, ID_MASK)) _fail(ERR_INVALID_REQUEST_ID);
        return _load(requestId);
    }

    /// @notice Number of requests ever submitted.
    function getRequestCount() external view returns (uint256) {
        return _field(_header, H_COUNT, ID_MASK);
    }

    /// @notice The request at array position `index` (id `index + 1`), as the public array
    ///         getter of the deployed V2 returned it: the `Request` fields as separate values.
    ///         Reverts with Panic(0x32) outside 0..getRequestCount()-1, as that getter did.
    function requests(uint256)
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
        )
    {
        uint256 index = _uintArgument(0);
        if (index >= _field(_header, H_COUNT, ID_MASK)) _panic(PANIC_OUT_OF_BOUNDS);
        // The named results document the ABI; they are returned below in assembly.
        (id, requester, nftContract, encryptedPayload, status, responsePayload, submittedAt, respondedAt);
        bytes memory encoded = abi.encode(_load(index + 1));
        // abi.encode of the struct is one offset word (0x20), then the tuple, whose own offsets
        // are relative to its start: the tuple alone is the encoding of these eight values.
        // Returning it spares a second ABI encoder in the code.
        assembly ("memory-safe") {
            return(add(encoded, 0x40), sub(mload(encoded), 0x20))
        }
    }

    /// @notice The `index`-th request id `requester` submitted (0-based), as the public getter
    ///         of the deployed V2's `mapping(address => uint256[])`. Reverts with Panic(0x32)
    ///         past the end.
    function requesterToRequestIds(address, uint256) external view returns (uint256) {
        address requester = address(uint160(_uintArgument(0)));
        uint256 index = _uintArgument(1);
        uint256 length = _requesterIdWords[requester][0] & type(uint64).max;
        if (index >= length) _panic(PANIC_OUT_OF_BOUNDS);
        uint256 position = index + 1; // lane 0 of word 0 is the length
        return (_requesterIdWords[requester][position >> 2] >> ((position & 3) * 64)) & type(uint64).max;
    }

    /// @notice Seconds a request may stay pending (1 hour .. 7 days, default 24 hours).
    function requestExpirationTime() external view returns (uint256) {
        return _expiration(_header);
    }

    /// @notice Number of NFT contracts whose current request is Approved.
    // forge-lint: disable-next-line(mixed-case-function)
    function _activeCount() external view returns (uint256) {
        return _field(_header, H_ACTIVE, ID_MASK);
    }

    /// @notice Number of NFT contracts whose current request is Pending (stale ones included
    ///         until they are marked Expired).
    // forge-lint: disable-next-line(mixed-case-function)
    function _pendingCount() external view returns (uint256) {
        return _field(_header, H_PENDING, ID_MASK);
    }

    // ------------------------------------------------------------------ internals: state

    function _isPastExpiry(uint256 record, uint256 header) private view returns (bool) {
        // Deadlines are hours to days long; a few seconds of proposer skew do not matter.
        // forge-lint: disable-next-line(block-timestamp)
        return block.timestamp > _field(record, R_SUBMITTED, TIME_MASK) + _expiration(header);
    }

    function _expiration(uint256 header) private pure returns (uint256) {
        return _field(header, H_EXPIRATION, ID_MASK) ^ DEFAULT_EXPIRATION;
    }

    /// @dev Makes room for one more request or reverts. Only called with `totalCapacity != 0`.
    function _reserveCapacity(uint256 header) private returns (uint256) {
        uint256 capacity = totalCapacity;
        uint256 used = _field(header, H_ACTIVE, ID_MASK) + _field(header, H_PENDING, ID_MASK);
        for (uint256 i = 0; used >= capacity && i < MAX_LAZY_EXPIRATIONS; ++i) {
            uint256 head = _field(header, H_HEAD, ID_MASK);
            if (head == 0) break;
            uint256 oldest = _records[head];
            if (!_isPastExpiry(oldest, header)) break;
            header = _expire(header, head, oldest);
            --used;
        }
        if (used >= capacity) _fail(ERR_NO_CAPACITY);
        return header;
    }

    /// @dev Pending (current, by I2) -> Expired by time-out.
    function _expire(uint256 header, uint256 requestId, uint256 record) private returns (uint256) {
        (header, record) = _dequeue(header, record);
        _records[requestId] = _ended(record);
        header -= ONE_PENDING;
        delete nftContractToRequestId[_nftContractOf(record)];
        emit RequestExpired(requestId);
        return header;
    }

    /// @dev Current request (Pending or Approved, by I1) -> Expired, adjusting its counter. The
    ///      caller replaces or clears the mapping.
    function _retire(uint256 header, uint256 requestId) private returns (uint256) {
        uint256 record = _records[requestId];
        if (_status(record) == RequestStatus.Pending) {
            (header, record) = _dequeue(header, record);
            header -= ONE_PENDING;
        } else {
            header -= ONE_ACTIVE;
        }
        _records[requestId] = _ended(record);
        return header;
    }

    function _release(address nftContract) private {
        uint256 requestId = nftContractToRequestId[nftContract];
        if (requestId == 0) _fail(ERR_NO_ALLOCATION);
        _header = _retire(_header, requestId);
        delete nftContractToRequestId[nftContract];
        emit AllocationReleased(requestId, nftContract, msg.sender);
    }

    /// @dev `record` marked Expired now.
    function _ended(uint256 record) private view returns (uint256) {
        record = _setField(record, R_STATUS, STATUS_MASK, uint256(RequestStatus.Expired));
        return _setField(record, R_RESPONDED, TIME_MASK, _now());
    }

    /// @dev Unlinks a pending request from anywhere in the queue; returns the new header and
    ///      the record without links (the caller stores it).
    function _dequeue(uint256 header, uint256 record) private returns (uint256, uint256) {
        uint256 prev = _field(record, R_PREV, ID_MASK);
        uint256 next = _field(record, R_NEXT, ID_MASK);
        if (prev == 0) {
            header = _setField(header, H_HEAD, ID_MASK, next);
        } else {
            _records[prev] = _setField(_records[prev], R_NEXT, ID_MASK, next);
        }
        if (next == 0) {
            header = _setField(header, H_TAIL, ID_MASK, prev);
        } else {
            _records[next] = _setField(_records[next], R_PREV, ID_MASK, prev);
        }
        return (header, record & ~R_LINKS);
    }

    /// @dev Appends `requestId` to `requester`'s id list.
    function _pushRequesterId(address requester, uint256 requestId) private {
        mapping(uint256 => uint256) storage words = _requesterIdWords[requester];
        uint256 first = words[0];
        uint256 position = (first & type(uint64).max) + 1; // lane 0 of word 0 is the length
        if (position < 4) {
            words[0] = (first + 1) | (requestId << (position * 64));
        } else {
            words[0] = first + 1;
            words[position >> 2] |= requestId << ((position & 3) * 64);
        }
    }

    function _load(uint256 requestId) private view returns (Request memory r) {
        uint256 record = _records[requestId];
        address data = _dataAddress(_field(record, R_REQUEST_DATA, NONCE_MASK));
        r.id = requestId;
        (r.requester, r.nftContract) = _requestParties(data);
        r.encryptedPayload = _codeFrom(data, REQUEST_DATA_PREFIX);
        r.status = _status(record);
        uint256 responseNonce = _field(record, R_RESPONSE_DATA, NONCE_MASK);
        if (responseNonce != 0) r.responsePayload = _codeFrom(_dataAddress(responseNonce), RESPONSE_DATA_PREFIX);
        r.submittedAt = _field(record, R_SUBMITTED, TIME_MASK);
        r.respondedAt = _field(record, R_RESPONDED, TIME_MASK);
    }

    function _status(uint256 record) private pure returns (RequestStatus status) {
        // Only Pending, Approved and Expired are ever stored: no range check needed (it cost
        // code at every use).
        assembly ("memory-safe") {
            status := and(record, STATUS_MASK)
        }
    }

    function _nftContractOf(uint256 record) private view returns (address) {
        (, address nftContract) = _requestParties(_dataAddress(_field(record, R_REQUEST_DATA, NONCE_MASK)));
        return nftContract;
    }

    function _now() private view returns (uint256) {
        // Only fails past the year 8,900,000; a field that wrapped would corrupt expiry.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp > TIME_MASK) _panic(PANIC_OVERFLOW);
        return block.timestamp;
    }

    function _field(uint256 word, uint256 offset, uint256 mask) private pure returns (uint256) {
        return (word >> offset) & mask;
    }

    /// @dev `value` must fit `mask` (callers pass ids, nonces, times and statuses checked above).
    function _setField(uint256 word, uint256 offset, uint256 mask, uint256 value) private pure returns (uint256) {
        return (word & ~(mask << offset)) | (value << offset);
    }

    /// @dev Reverts with `Error(string)`, the reason taken from `REVERT_REASONS`: the same
    ///      bytes as `require(false, reason)`.
    function _fail(uint256 reason) internal pure {
        bytes memory table = bytes(REVERT_REASONS);
        assembly ("memory-safe") {
            let length := and(reason, 0xff)
            let ptr := mload(0x40)
            mstore(ptr, shl(224, 0x08c379a0)) // Error(string)
            mstore(add(ptr, 0x04), 0x20)
            mstore(add(ptr, 0x24), length)
            mstore(add(add(ptr, 0x44), and(length, not(31))), 0) // zero padding after the text
            mcopy(add(ptr, 0x44), add(add(table, 0x20), shr(8, reason)), length)
            revert(ptr, add(0x44, and(add(length, 31), not(31))))
        }
    }

    /// @dev The `n`-th static argument of this call (already validated by the ABI decoder). The
    ///      getters that replace the deployed V2's public state leave their parameters unnamed,
    ///      as the compiler-generated getters did, so that the ABI stays exactly the same.
    function _uintArgument(uint256 n) private pure returns (uint256 value) {
        assembly ("memory-safe") {
            value := calldataload(add(4, mul(n, 0x20)))
        }
    }

    /// @dev Reverts with `Panic(code)`, as Solidity does for its built-in checks.
    function _panic(uint256 code) private pure {
        assembly ("memory-safe") {
            mstore(0x00, 0x4e487b71) // Panic(uint256)
            mstore(0x20, code)
            revert(0x1c, 0x24)
        }
    }

    // ------------------------------------------------------------------ internals: data contracts

    /// @dev Creates the data contract `0x00 ‖ requester ‖ nftContract ‖ payload` with the next
    ///      nonce. Init code (10 bytes, as SSTORE2): PUSH2 size, DUP1, PUSH1 10, RETURNDATASIZE,
    ///      CODECOPY, RETURNDATASIZE, RETURN, i.e. return code[10..10+size). Reverts if the
    ///      creation fails, which also undoes the nonce increment.
    function _createRequestData(address requester, address nftContract, bytes calldata payload) private {
        assembly ("memory-safe") {
            let size := add(payload.length, 41) // code size: STOP, two addresses, payload
            let ptr := mload(0x40)
            // Bytes 0..9 init code, byte 10 the STOP (left zero by this store).
            mstore(ptr, shl(176, or(0x61000080600a3d393df3, shl(56, size))))
            mstore(add(ptr, 11), shl(96, requester))
            mstore(add(ptr, 31), shl(96, nftContract))
            calldatacopy(add(ptr, 51), payload.offset, payload.length)
            if iszero(create(0, ptr, add(size, 10))) { revert(0x00, 0x00) }
        }
    }

    /// @dev Creates the data contract `0x00 ‖ payload` with the next nonce (see above).
    function _createResponseData(bytes calldata payload) private {
        assembly ("memory-safe") {
            let size := add(payload.length, 1)
            let ptr := mload(0x40)
            mstore(ptr, shl(176, or(0x61000080600a3d393df3, shl(56, size))))
            calldatacopy(add(ptr, 11), payload.offset, payload.length)
            if iszero(create(0, ptr, add(size, 10))) { revert(0x00, 0x00) }
        }
    }

    /// @dev Address of the contract this contract created with `nonce` (1 <= nonce < 2**40):
    ///      keccak256(rlp([address(this), nonce]))[12:].
    function _dataAddress(uint256 nonce) internal view returns (address data) {
        assembly ("memory-safe") {
            // RLP of the nonce: one byte below 0x80, else 0x80 + n followed by n bytes.
            let n := add(add(gt(nonce, 0xff), gt(nonce, 0xffff)), add(gt(nonce, 0xffffff), gt(nonce, 0xffffffff)))
            n := add(n, 1)
            let long := gt(nonce, 0x7f)
            // list header 0xc0 + payload length; payload = 0x94 ‖ address ‖ nonce encoding
            mstore8(0x00, add(0xd6, mul(long, n)))
            mstore8(0x01, 0x94)
            mstore(0x02, shl(96, address()))
            switch long
            case 0 { mstore8(0x16, nonce) }
            default {
                mstore8(0x16, add(0x80, n))
                mstore(0x17, shl(sub(256, mul(8, n)), nonce))
            }
            data := and(keccak256(0x00, add(0x17, mul(long, n))), 0xffffffffffffffffffffffffffffffffffffffff)
        }
    }

    /// @dev Requester and NFT contract from a request's data contract (bytes 1..40).
    function _requestParties(address data) private view returns (address requester, address nftContract) {
        assembly ("memory-safe") {
            extcodecopy(data, 0x00, 1, 40)
            requester := shr(96, mload(0x00))
            nftContract := shr(96, mload(0x14))
        }
    }

    /// @dev A data contract's code from byte `start` on (its payload).
    function _codeFrom(address data, uint256 start) private view returns (bytes memory out) {
        assembly ("memory-safe") {
            let length := sub(extcodesize(data), start)
            out := mload(0x40)
            mstore(out, length)
            extcodecopy(data, add(out, 0x20), start, length)
            mstore(0x40, and(add(add(out, 0x3f), length), not(0x1f)))
        }
    }

    // ------------------------------------------------------------------ internals: NFT checks

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
            isOwner := and(
                ok,
                and(
                    gt(returndatasize(), 0x1f),
                    eq(mload(0x00), and(account, 0xffffffffffffffffffffffffffffffffffffffff))
                )
            )
        }
    }
}
