// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {BrokerRegistry} from "../src/BrokerRegistry.sol";

/// @dev The Broker tuple exactly as wire-protocol.md §1 lists it, independent of the contract.
struct WireBroker {
    address operator;
    address requestsContract;
    bytes encryptionPubkey;
    string region;
    bool active;
    uint256 capacity;
    uint256 currentLoad;
    uint256 registeredAt;
}

contract BrokerRegistryTest is Test {
    BrokerRegistry internal registry;

    address internal admin = makeAddr("admin");
    address internal operator = makeAddr("operator");
    address internal operator2 = makeAddr("operator2");
    address internal stranger = makeAddr("stranger");
    address internal requestsA = makeAddr("requestsA");
    address internal requestsB = makeAddr("requestsB");
    address internal requestsC = makeAddr("requestsC");

    bytes internal pubkey;
    bytes internal pubkey2;

    function setUp() public {
        vm.warp(1_700_000_000);
        vm.prank(admin);
        registry = new BrokerRegistry();
        pubkey = _pubkey(0x11);
        pubkey2 = _pubkey(0x22);
    }

    function _pubkey(uint8 fill) internal pure returns (bytes memory key) {
        key = new bytes(65);
        key[0] = 0x04;
        for (uint256 i = 1; i < 65; ++i) key[i] = bytes1(fill);
    }

    function _register(address op, address rc) internal returns (uint256 id) {
        vm.prank(admin);
        id = registry.registerBroker(op, rc, pubkey, "eu-west", 100);
    }

    // ------------------------------------------------------------------ ABI (wire protocol §1)

    function test_abi_signaturesMatchTheWireProtocol() public view {
        assertEq(
            BrokerRegistry.registerBroker.selector,
            bytes4(keccak256("registerBroker(address,address,bytes,string,uint256)"))
        );
        assertEq(BrokerRegistry.updateEncryptionPubkey.selector, bytes4(keccak256("updateEncryptionPubkey(bytes)")));
        assertEq(BrokerRegistry.updateRegion.selector, bytes4(keccak256("updateRegion(string)")));
        assertEq(BrokerRegistry.updateCapacity.selector, bytes4(keccak256("updateCapacity(uint256)")));
        assertEq(BrokerRegistry.updateLoad.selector, bytes4(keccak256("updateLoad(uint256)")));
        assertEq(BrokerRegistry.deactivate.selector, bytes4(keccak256("deactivate()")));
        assertEq(BrokerRegistry.activate.selector, bytes4(keccak256("activate()")));
        assertEq(BrokerRegistry.removeBroker.selector, bytes4(keccak256("removeBroker(uint256)")));
        assertEq(BrokerRegistry.getBroker.selector, bytes4(keccak256("getBroker(uint256)")));
        assertEq(BrokerRegistry.getBrokerCount.selector, bytes4(keccak256("getBrokerCount()")));
        assertEq(BrokerRegistry.isOperator.selector, bytes4(keccak256("isOperator(address)")));
        assertEq(registry.brokers.selector, bytes4(keccak256("brokers(uint256)")));
        assertEq(registry.operatorToBrokerId.selector, bytes4(keccak256("operatorToBrokerId(address)")));
        assertEq(
            registry.requestsContractToBrokerId.selector, bytes4(keccak256("requestsContractToBrokerId(address)"))
        );
        assertEq(
            BrokerRegistry.BrokerRegistered.selector, keccak256("BrokerRegistered(uint256,address,address,string)")
        );
        assertEq(BrokerRegistry.BrokerUpdated.selector, keccak256("BrokerUpdated(uint256,address)"));
        assertEq(BrokerRegistry.BrokerDeactivated.selector, keccak256("BrokerDeactivated(uint256,address)"));
        assertEq(BrokerRegistry.BrokerActivated.selector, keccak256("BrokerActivated(uint256,address)"));
        assertEq(BrokerRegistry.BrokerLoadUpdated.selector, keccak256("BrokerLoadUpdated(uint256,uint256)"));
    }

    function test_getBroker_returnsTheStructInWireOrder() public {
        uint256 id = _register(operator, requestsA);
        // getBroker returns one tuple (address,address,bytes,string,bool,uint256,uint256,uint256).
        (bool ok, bytes memory ret) = address(registry).staticcall(abi.encodeCall(registry.getBroker, (id)));
        assertTrue(ok);
        WireBroker memory w = abi.decode(ret, (WireBroker));
        (address op, address rc, bytes memory key, string memory region, bool active, uint256 capacity) =
            (w.operator, w.requestsContract, w.encryptionPubkey, w.region, w.active, w.capacity);
        (uint256 load, uint256 registeredAt) = (w.currentLoad, w.registeredAt);
        assertEq(op, operator);
        assertEq(rc, requestsA);
        assertEq(key, pubkey);
        assertEq(region, "eu-west");
        assertTrue(active);
        assertEq(capacity, 100);
        assertEq(load, 0);
        assertEq(registeredAt, block.timestamp);
    }

    // ------------------------------------------------------------------ ownership

    function test_constructor_setsDeployerAsOwner() public view {
        assertEq(registry.owner(), admin);
        assertEq(registry.getBrokerCount(), 0);
    }

    function test_transferOwnership_newOwnerCanRegister() public {
        vm.prank(admin);
        registry.transferOwnership(stranger);
        vm.prank(stranger);
        registry.registerBroker(operator, requestsA, pubkey, "x", 0);
        vm.prank(admin);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, admin));
        registry.registerBroker(operator2, requestsB, pubkey, "x", 0);
    }

    // ------------------------------------------------------------------ registerBroker

    function test_registerBroker_storesEntryAndEmits() public {
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerRegistered(1, operator, requestsA, "eu-west");
        uint256 id = _register(operator, requestsA);

        assertEq(id, 1);
        assertEq(registry.getBrokerCount(), 1);
        assertEq(registry.operatorToBrokerId(operator), 1);
        assertEq(registry.requestsContractToBrokerId(requestsA), 1);
        assertTrue(registry.isOperator(operator));

        BrokerRegistry.Broker memory b = registry.getBroker(1);
        assertEq(b.operator, operator);
        assertEq(b.requestsContract, requestsA);
        assertEq(b.encryptionPubkey, pubkey);
        assertEq(b.region, "eu-west");
        assertTrue(b.active);
        assertEq(b.capacity, 100);
        assertEq(b.currentLoad, 0);
        assertEq(b.registeredAt, 1_700_000_000);

        (address op, address rc, bytes memory key, string memory region, bool active, uint256 cap,,) =
            registry.brokers(0);
        assertEq(op, operator);
        assertEq(rc, requestsA);
        assertEq(key, pubkey);
        assertEq(region, "eu-west");
        assertTrue(active);
        assertEq(cap, 100);
    }

    function test_registerBroker_idsAreOneBasedAndSequential() public {
        assertEq(_register(operator, requestsA), 1);
        assertEq(_register(operator2, requestsB), 2);
        assertEq(registry.getBroker(2).operator, operator2);
    }

    function test_registerBroker_revertsForNonOwner() public {
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        registry.registerBroker(operator, requestsA, pubkey, "eu-west", 0);
    }

    function test_registerBroker_revertsForZeroOperator() public {
        vm.prank(admin);
        vm.expectRevert("Invalid operator address");
        registry.registerBroker(address(0), requestsA, pubkey, "eu-west", 0);
    }

    function test_registerBroker_revertsForZeroRequestsContract() public {
        vm.prank(admin);
        vm.expectRevert("Invalid requests contract");
        registry.registerBroker(operator, address(0), pubkey, "eu-west", 0);
    }

    function test_registerBroker_revertsForPubkeyOf64Bytes() public {
        vm.prank(admin);
        vm.expectRevert("Pubkey must be 65 bytes (uncompressed secp256k1)");
        registry.registerBroker(operator, requestsA, new bytes(64), "eu-west", 0);
    }

    function test_registerBroker_revertsForPubkeyOf66Bytes() public {
        vm.prank(admin);
        vm.expectRevert("Pubkey must be 65 bytes (uncompressed secp256k1)");
        registry.registerBroker(operator, requestsA, new bytes(66), "eu-west", 0);
    }

    function test_registerBroker_revertsForEmptyPubkey() public {
        vm.prank(admin);
        vm.expectRevert("Pubkey must be 65 bytes (uncompressed secp256k1)");
        registry.registerBroker(operator, requestsA, "", "eu-west", 0);
    }

    function test_registerBroker_revertsForDuplicateRequestsContract() public {
        _register(operator, requestsA);
        vm.prank(admin);
        vm.expectRevert("Requests contract already registered");
        registry.registerBroker(operator2, requestsA, pubkey, "eu-west", 0);
    }

    function test_registerBroker_reRegistrationDeactivatesOldEntry() public {
        _register(operator, requestsA);

        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerDeactivated(1, operator);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerRegistered(2, operator, requestsB, "us-east");
        vm.prank(admin);
        uint256 id = registry.registerBroker(operator, requestsB, pubkey2, "us-east", 5);

        assertEq(id, 2);
        assertEq(registry.getBrokerCount(), 2);
        assertFalse(registry.getBroker(1).active);
        assertEq(registry.getBroker(1).operator, operator, "history kept");
        assertTrue(registry.getBroker(2).active);
        assertEq(registry.getBroker(2).encryptionPubkey, pubkey2);
        assertEq(registry.operatorToBrokerId(operator), 2);
        assertEq(registry.requestsContractToBrokerId(requestsB), 2);
        assertEq(registry.requestsContractToBrokerId(requestsA), 0, "old requests contract released");

        // The replaced entry can no longer be driven by the operator: its calls hit entry 2.
        vm.prank(operator);
        registry.deactivate();
        assertFalse(registry.getBroker(2).active);
        vm.prank(operator);
        registry.activate();
        assertFalse(registry.getBroker(1).active);
        assertTrue(registry.getBroker(2).active);
    }

    function test_registerBroker_reRegistrationWithSameRequestsContract() public {
        _register(operator, requestsA);
        vm.prank(admin);
        uint256 id = registry.registerBroker(operator, requestsA, pubkey2, "ap-south", 7);
        assertEq(id, 2);
        assertFalse(registry.getBroker(1).active);
        assertEq(registry.requestsContractToBrokerId(requestsA), 2);
        assertEq(registry.operatorToBrokerId(operator), 2);
    }

    function test_registerBroker_reRegistrationWithAnotherOperatorsContractRevertsAndKeepsOldEntry() public {
        _register(operator, requestsA);
        _register(operator2, requestsB);
        vm.prank(admin);
        vm.expectRevert("Requests contract already registered");
        registry.registerBroker(operator, requestsB, pubkey, "eu-west", 0);
        assertTrue(registry.getBroker(1).active, "reverted call left the old entry alone");
        assertEq(registry.operatorToBrokerId(operator), 1);
        assertEq(registry.requestsContractToBrokerId(requestsA), 1);
    }

    function test_registerBroker_requestsContractReusableAfterRemoval() public {
        _register(operator, requestsA);
        vm.prank(admin);
        registry.removeBroker(1);
        assertEq(_register(operator2, requestsA), 2);
        assertEq(registry.requestsContractToBrokerId(requestsA), 2);
    }

    // ------------------------------------------------------------------ operator updates

    function test_updateEncryptionPubkey() public {
        _register(operator, requestsA);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerUpdated(1, operator);
        vm.prank(operator);
        registry.updateEncryptionPubkey(pubkey2);
        assertEq(registry.getBroker(1).encryptionPubkey, pubkey2);
    }

    function test_updateEncryptionPubkey_revertsForWrongLength() public {
        _register(operator, requestsA);
        vm.prank(operator);
        vm.expectRevert("Pubkey must be 65 bytes");
        registry.updateEncryptionPubkey(new bytes(33));
    }

    function test_updateEncryptionPubkey_revertsForNonOperator() public {
        _register(operator, requestsA);
        vm.prank(stranger);
        vm.expectRevert("Not a registered operator");
        registry.updateEncryptionPubkey(pubkey2);
    }

    function test_updateRegion() public {
        _register(operator, requestsA);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerUpdated(1, operator);
        vm.prank(operator);
        registry.updateRegion("us-west");
        assertEq(registry.getBroker(1).region, "us-west");
    }

    function test_updateRegion_revertsForEmptyRegionAndKeepsTheOldOne() public {
        _register(operator, requestsA);
        vm.prank(operator);
        vm.expectRevert("Region cannot be empty");
        registry.updateRegion("");
        assertEq(registry.getBroker(1).region, "eu-west");
    }

    function test_updateRegion_revertsForNonOperator() public {
        vm.prank(stranger);
        vm.expectRevert("Not a registered operator");
        registry.updateRegion("us-west");
    }

    function test_updateCapacity() public {
        _register(operator, requestsA);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerUpdated(1, operator);
        vm.prank(operator);
        registry.updateCapacity(500);
        assertEq(registry.getBroker(1).capacity, 500);
    }

    function test_updateCapacity_belowLoadIsAccepted() public {
        _register(operator, requestsA);
        vm.startPrank(operator);
        registry.updateLoad(80);
        registry.updateCapacity(10);
        vm.stopPrank();
        assertEq(registry.getBroker(1).capacity, 10);
        assertEq(registry.getBroker(1).currentLoad, 80);
    }

    function test_updateCapacity_revertsForNonOperator() public {
        vm.prank(stranger);
        vm.expectRevert("Not a registered operator");
        registry.updateCapacity(1);
    }

    function test_updateLoad() public {
        _register(operator, requestsA);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerLoadUpdated(1, 42);
        vm.prank(operator);
        registry.updateLoad(42);
        assertEq(registry.getBroker(1).currentLoad, 42);
    }

    function test_updateLoad_equalToCapacityIsAccepted() public {
        _register(operator, requestsA); // capacity 100
        vm.prank(operator);
        registry.updateLoad(100);
        assertEq(registry.getBroker(1).currentLoad, 100);
    }

    function test_updateLoad_revertsAboveCapacity() public {
        _register(operator, requestsA); // capacity 100
        vm.prank(operator);
        vm.expectRevert("Load exceeds capacity");
        registry.updateLoad(101);
    }

    function test_updateLoad_unlimitedCapacityAcceptsAnyLoad() public {
        vm.prank(admin);
        registry.registerBroker(operator, requestsA, pubkey, "eu-west", 0);
        vm.prank(operator);
        registry.updateLoad(type(uint256).max);
        assertEq(registry.getBroker(1).currentLoad, type(uint256).max);
    }

    function test_updateLoad_revertsForNonOperator() public {
        vm.prank(stranger);
        vm.expectRevert("Not a registered operator");
        registry.updateLoad(1);
    }

    function test_deactivateAndActivate() public {
        _register(operator, requestsA);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerDeactivated(1, operator);
        vm.prank(operator);
        registry.deactivate();
        assertFalse(registry.getBroker(1).active);

        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerActivated(1, operator);
        vm.prank(operator);
        registry.activate();
        assertTrue(registry.getBroker(1).active);
    }

    function test_deactivate_revertsForNonOperator() public {
        vm.prank(stranger);
        vm.expectRevert("Not a registered operator");
        registry.deactivate();
    }

    function test_activate_revertsForNonOperator() public {
        vm.prank(stranger);
        vm.expectRevert("Not a registered operator");
        registry.activate();
    }

    function test_operatorFunctions_ownerIsNotAnOperator() public {
        _register(operator, requestsA);
        vm.prank(admin);
        vm.expectRevert("Not a registered operator");
        registry.deactivate();
    }

    // ------------------------------------------------------------------ removeBroker

    function test_removeBroker_deactivatesAndClearsMappings() public {
        _register(operator, requestsA);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerDeactivated(1, operator);
        vm.prank(admin);
        registry.removeBroker(1);

        BrokerRegistry.Broker memory removed = registry.getBroker(1);
        assertFalse(removed.active);
        assertEq(removed.operator, address(0), "the removed entry names no operator");
        assertEq(removed.requestsContract, requestsA, "the rest of the entry is kept");
        assertEq(removed.encryptionPubkey, pubkey);
        assertEq(registry.operatorToBrokerId(operator), 0);
        assertEq(registry.requestsContractToBrokerId(requestsA), 0);
        assertFalse(registry.isOperator(operator));
        assertEq(registry.getBrokerCount(), 1, "entries are never deleted");

        vm.prank(operator);
        vm.expectRevert("Not a registered operator");
        registry.activate();
    }

    function test_removeBroker_ofReplacedEntryKeepsTheNewMappings() public {
        _register(operator, requestsA);
        vm.prank(admin);
        registry.registerBroker(operator, requestsB, pubkey, "eu-west", 0); // id 2 replaces id 1
        vm.prank(admin);
        registry.removeBroker(1);
        assertEq(registry.operatorToBrokerId(operator), 2);
        assertEq(registry.requestsContractToBrokerId(requestsB), 2);
        assertTrue(registry.getBroker(2).active);
        assertEq(registry.getBroker(1).operator, address(0));
        assertEq(registry.getBroker(2).operator, operator, "the replacing entry keeps its operator");
    }

    function test_removeBroker_isIdempotent() public {
        _register(operator, requestsA);
        vm.startPrank(admin);
        registry.removeBroker(1);
        vm.expectEmit(address(registry));
        emit BrokerRegistry.BrokerDeactivated(1, address(0));
        registry.removeBroker(1);
        vm.stopPrank();
        assertFalse(registry.getBroker(1).active);
        assertEq(registry.getBroker(1).operator, address(0));
        assertEq(registry.getBrokerCount(), 1);
    }

    function test_removeBroker_operatorCanBeRegisteredAgain() public {
        _register(operator, requestsA);
        vm.prank(admin);
        registry.removeBroker(1);
        assertEq(_register(operator, requestsC), 2);
        assertTrue(registry.isOperator(operator));
        assertFalse(registry.getBroker(1).active);
    }

    function test_removeBroker_revertsForInvalidId() public {
        _register(operator, requestsA);
        vm.startPrank(admin);
        vm.expectRevert("Invalid broker ID");
        registry.removeBroker(0);
        vm.expectRevert("Invalid broker ID");
        registry.removeBroker(2);
        vm.stopPrank();
    }

    function test_removeBroker_revertsForNonOwner() public {
        _register(operator, requestsA);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, operator));
        registry.removeBroker(1);
    }

    // ------------------------------------------------------------------ views

    function test_getBroker_revertsOutsideRange() public {
        vm.expectRevert("Invalid broker ID");
        registry.getBroker(0);
        _register(operator, requestsA);
        vm.expectRevert("Invalid broker ID");
        registry.getBroker(2);
    }

    function test_isOperator() public {
        assertFalse(registry.isOperator(operator));
        _register(operator, requestsA);
        assertTrue(registry.isOperator(operator));
        assertFalse(registry.isOperator(stranger));
    }

    // ------------------------------------------------------------------ fuzz

    function testFuzz_registerBroker_onlyAccepts65BytePubkeys(uint16 rawLength) public {
        uint256 length = bound(rawLength, 0, 200);
        vm.prank(admin);
        if (length != 65) vm.expectRevert("Pubkey must be 65 bytes (uncompressed secp256k1)");
        registry.registerBroker(operator, requestsA, new bytes(length), "r", 0);
    }

    function testFuzz_updateLoad_respectsCapacity(uint256 capacity, uint256 load) public {
        vm.prank(admin);
        registry.registerBroker(operator, requestsA, pubkey, "r", capacity);
        vm.prank(operator);
        if (capacity != 0 && load > capacity) vm.expectRevert("Load exceeds capacity");
        registry.updateLoad(load);
    }

    function testFuzz_reRegistration_keepsOneActiveEntryPerOperator(uint8 rawRounds) public {
        uint256 rounds = bound(rawRounds, 1, 12);
        for (uint256 i = 0; i < rounds; ++i) {
            address rc = address(uint160(0x1000 + i % 3)); // reuse contracts across rounds
            vm.prank(admin);
            registry.registerBroker(operator, rc, pubkey, "r", 0);
        }
        uint256 active = 0;
        for (uint256 id = 1; id <= registry.getBrokerCount(); ++id) {
            if (registry.getBroker(id).active) ++active;
        }
        assertEq(active, 1);
        assertEq(registry.operatorToBrokerId(operator), registry.getBrokerCount());
        assertTrue(registry.getBroker(registry.getBrokerCount()).active);
    }
}
