// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title BrokerRegistry
/// @notice Global, owner-managed directory of BlockHost IPv6 tunnel brokers.
/// @dev Clients read it to pick a broker: an active entry whose requests contract reports
///      `getAvailableCapacity() > 0`. Broker ids are 1-based (`brokers[id - 1]`), 0 means
///      "none", and entries are never deleted, so an id keeps naming the same entry forever.
///
///      Mapping discipline (every function keeps it): `operatorToBrokerId[a] == id` and
///      `requestsContractToBrokerId[c] == id` only ever point at entry `id` whose `operator`
///      is `a` / whose `requestsContract` is `c`; each operator and each requests contract
///      maps to at most one entry; entries that lost their mappings (replaced by a
///      re-registration, or removed by the owner) are inactive and no function reactivates them.
contract BrokerRegistry is Ownable {
    /// @notice One broker. The field order is the ABI tuple order that clients decode.
    struct Broker {
        /// @dev Operator wallet; also the owner of `requestsContract`. Zero once removed.
        address operator;
        /// @dev The broker's BrokerRequests contract.
        address requestsContract;
        /// @dev ECIES public key: 65 bytes, uncompressed SEC1 (0x04 || X || Y).
        bytes encryptionPubkey;
        /// @dev Free-form geographic hint, e.g. "eu-west".
        string region;
        /// @dev Whether the broker accepts new requests.
        bool active;
        /// @dev Advertised maximum number of allocations (0 = unlimited).
        uint256 capacity;
        /// @dev Advertised current number of allocations.
        uint256 currentLoad;
        /// @dev Block timestamp of registration.
        uint256 registeredAt;
    }

    /// @dev Length of an uncompressed SEC1 secp256k1 public key.
    uint256 private constant PUBKEY_LENGTH = 65;

    /// @notice All entries ever registered; entry `id` lives at index `id - 1`.
    Broker[] public brokers;

    /// @notice Operator address => id of its current entry (0 = not registered).
    mapping(address => uint256) public operatorToBrokerId;

    /// @notice Requests contract => id of the entry that registered it (0 = none).
    mapping(address => uint256) public requestsContractToBrokerId;

    event BrokerRegistered(uint256 indexed brokerId, address indexed operator, address requestsContract, string region);
    event BrokerUpdated(uint256 indexed brokerId, address indexed operator);
    event BrokerDeactivated(uint256 indexed brokerId, address indexed operator);
    event BrokerActivated(uint256 indexed brokerId, address indexed operator);
    event BrokerLoadUpdated(uint256 indexed brokerId, uint256 currentLoad);

    constructor() Ownable(msg.sender) {}

    /// @dev Resolves the caller's entry; reverts for callers that are not registered operators.
    function _callerBrokerId() private view returns (uint256 brokerId) {
        brokerId = operatorToBrokerId[msg.sender];
        require(brokerId != 0, "Not a registered operator");
    }

    /// @notice Registers a broker (owner only) and returns its new 1-based id.
    /// @dev Rejects a zero operator, a zero requests contract, a pubkey that is not 65 bytes
    ///      and a requests contract registered by another entry. When `operator` already has an
    ///      entry, that entry is deactivated (emitting `BrokerDeactivated`), loses its mappings,
    ///      and a new active entry is appended: re-registering with the same requests contract is
    ///      therefore allowed (the old entry gives it up first).
    function registerBroker(
        address operator,
        address requestsContract,
        bytes calldata encryptionPubkey,
        string calldata region,
        uint256 capacity
    ) external onlyOwner returns (uint256 brokerId) {
        require(operator != address(0), "Invalid operator address");
        require(requestsContract != address(0), "Invalid requests contract");
        require(encryptionPubkey.length == PUBKEY_LENGTH, "Pubkey must be 65 bytes (uncompressed secp256k1)");

        uint256 oldId = operatorToBrokerId[operator];
        if (oldId != 0) {
            Broker storage old = brokers[oldId - 1];
            old.active = false;
            delete operatorToBrokerId[operator];
            if (requestsContractToBrokerId[old.requestsContract] == oldId) {
                delete requestsContractToBrokerId[old.requestsContract];
            }
            emit BrokerDeactivated(oldId, operator);
        }

        require(requestsContractToBrokerId[requestsContract] == 0, "Requests contract already registered");

        brokers.push(
            Broker({
                operator: operator,
                requestsContract: requestsContract,
                encryptionPubkey: encryptionPubkey,
                region: region,
                active: true,
                capacity: capacity,
                currentLoad: 0,
                registeredAt: block.timestamp
            })
        );
        brokerId = brokers.length;
        operatorToBrokerId[operator] = brokerId;
        requestsContractToBrokerId[requestsContract] = brokerId;

        emit BrokerRegistered(brokerId, operator, requestsContract, region);
    }

    /// @notice Replaces the caller's ECIES public key (65 bytes, uncompressed SEC1).
    function updateEncryptionPubkey(bytes calldata encryptionPubkey) external {
        uint256 brokerId = _callerBrokerId();
        require(encryptionPubkey.length == PUBKEY_LENGTH, "Pubkey must be 65 bytes");
        brokers[brokerId - 1].encryptionPubkey = encryptionPubkey;
        emit BrokerUpdated(brokerId, msg.sender);
    }

    /// @notice Replaces the caller's region hint; an empty one is refused (as the V2 registry
    ///         that deployed tools know does).
    function updateRegion(string calldata region) external {
        uint256 brokerId = _callerBrokerId();
        require(bytes(region).length > 0, "Region cannot be empty");
        brokers[brokerId - 1].region = region;
        emit BrokerUpdated(brokerId, msg.sender);
    }

    /// @notice Sets the caller's advertised capacity (0 = unlimited).
    /// @dev A capacity below the current load is accepted (the broker is then over capacity
    ///      until its load drops); only `updateLoad` enforces load <= capacity.
    function updateCapacity(uint256 capacity) external {
        uint256 brokerId = _callerBrokerId();
        brokers[brokerId - 1].capacity = capacity;
        emit BrokerUpdated(brokerId, msg.sender);
    }

    /// @notice Sets the caller's advertised load; rejects a load above a non-zero capacity.
    function updateLoad(uint256 currentLoad) external {
        uint256 brokerId = _callerBrokerId();
        Broker storage broker = brokers[brokerId - 1];
        require(broker.capacity == 0 || currentLoad <= broker.capacity, "Load exceeds capacity");
        broker.currentLoad = currentLoad;
        emit BrokerLoadUpdated(brokerId, currentLoad);
    }

    /// @notice Stops advertising the caller's broker to clients.
    function deactivate() external {
        uint256 brokerId = _callerBrokerId();
        brokers[brokerId - 1].active = false;
        emit BrokerDeactivated(brokerId, msg.sender);
    }

    /// @notice Advertises the caller's broker to clients again.
    function activate() external {
        uint256 brokerId = _callerBrokerId();
        brokers[brokerId - 1].active = true;
        emit BrokerActivated(brokerId, msg.sender);
    }

    /// @notice Removes a broker (owner only): deactivates the entry, clears the mappings
    ///         that still point at it and sets its `operator` to the zero address (as the V2
    ///         registry does: tools in the field read a zero operator as "removed"). The entry
    ///         itself stays, so ids keep their meaning.
    /// @dev Idempotent; emits `BrokerDeactivated` with the operator the entry had before this
    ///      call (the zero address when it was removed already).
    function removeBroker(uint256 brokerId) external onlyOwner {
        require(brokerId > 0 && brokerId <= brokers.length, "Invalid broker ID");
        Broker storage broker = brokers[brokerId - 1];
        address operator = broker.operator;
        broker.active = false;
        broker.operator = address(0);
        if (operatorToBrokerId[operator] == brokerId) {
            delete operatorToBrokerId[operator];
        }
        if (requestsContractToBrokerId[broker.requestsContract] == brokerId) {
            delete requestsContractToBrokerId[broker.requestsContract];
        }
        emit BrokerDeactivated(brokerId, operator);
    }

    /// @notice Returns entry `brokerId` (1-based); reverts outside 1..getBrokerCount().
    function getBroker(uint256 brokerId) external view returns (Broker memory) {
        require(brokerId > 0 && brokerId <= brokers.length, "Invalid broker ID");
        return brokers[brokerId - 1];
    }

    /// @notice Number of entries ever registered (including inactive ones).
    function getBrokerCount() external view returns (uint256) {
        return brokers.length;
    }

    /// @notice Whether `operator` currently has an entry (active or not).
    function isOperator(address operator) external view returns (bool) {
        return operatorToBrokerId[operator] != 0;
    }
}
