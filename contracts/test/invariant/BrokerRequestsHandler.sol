// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {BrokerRequests} from "../../src/BrokerRequests.sol";
import {FakeNFT} from "../../src/testing/FakeNFT.sol";

/// @notice Drives a BrokerRequests through random call sequences and keeps an independent
///         model of what every call must do. Each action predicts success or failure from the
///         model, performs the call, asserts that the contract agreed and only then updates the
///         model. Actions never revert on their own, so with `fail_on_revert = true` any
///         disagreement fails the invariant run at the call that caused it.
contract BrokerRequestsHandler is Test {
    uint8 internal constant PENDING = 0;
    uint8 internal constant APPROVED = 1;
    uint8 internal constant EXPIRED = 3;
    uint256 internal constant MAX_LAZY_EXPIRATIONS = 16;
    uint256 internal constant NFT_COUNT = 8;
    uint256 internal constant ACTOR_COUNT = 3;

    BrokerRequests public immutable requests;
    address public immutable broker;
    address[] public nfts;
    address[] public actors;

    struct ModelRequest {
        address nft;
        uint8 status;
        uint256 submittedAt;
    }

    ModelRequest[] internal model;
    mapping(address => uint256) public modelCurrent;
    uint256 public modelCapacity;
    uint256 public modelExpiration = 24 hours;
    /// @dev block.timestamp for every call (warps are replayed at the start of each action).
    uint256 public now_;

    // Call statistics, printed by the invariant test so a reader sees what was exercised.
    mapping(bytes32 => uint256) public calls;

    constructor(BrokerRequests requests_, address broker_) {
        requests = requests_;
        broker = broker_;
        now_ = block.timestamp;
        for (uint256 i = 0; i < ACTOR_COUNT; ++i) {
            actors.push(makeAddr(string.concat("actor", vm.toString(i))));
        }
        for (uint256 i = 0; i < NFT_COUNT; ++i) {
            nfts.push(address(new FakeNFT(actors[i % ACTOR_COUNT], FakeNFT.Mode.ClaimsERC721)));
        }
    }

    // ------------------------------------------------------------------ model helpers

    function modelCount() external view returns (uint256) {
        return model.length;
    }

    function modelStatus(uint256 id) external view returns (uint8) {
        return model[id - 1].status;
    }

    function nftCount() external pure returns (uint256) {
        return NFT_COUNT;
    }

    function _stale(uint256 id) internal view returns (bool) {
        return now_ > model[id - 1].submittedAt + modelExpiration;
    }

    function modelUsed() public view returns (uint256 used) {
        for (uint256 i = 0; i < NFT_COUNT; ++i) {
            if (modelCurrent[nfts[i]] != 0) ++used;
        }
    }

    function modelPending() public view returns (uint256 n) {
        for (uint256 i = 0; i < NFT_COUNT; ++i) {
            uint256 id = modelCurrent[nfts[i]];
            if (id != 0 && model[id - 1].status == PENDING) ++n;
        }
    }

    /// @dev Stale pending requests, oldest first, as the contract's queue sees them.
    function modelStalePrefix(uint256 limit) public view returns (uint256[] memory ids, uint256 n) {
        ids = new uint256[](limit);
        for (uint256 id = 1; id <= model.length && n < limit; ++id) {
            if (model[id - 1].status != PENDING) continue;
            if (!_stale(id)) break;
            ids[n++] = id;
        }
    }

    function modelAvailable() external view returns (uint256) {
        if (modelCapacity == 0) return type(uint256).max;
        (, uint256 stale) = modelStalePrefix(MAX_LAZY_EXPIRATIONS);
        uint256 used = modelUsed() - stale;
        return used >= modelCapacity ? 0 : modelCapacity - used;
    }

    function _modelExpire(uint256 id) internal {
        model[id - 1].status = EXPIRED;
        delete modelCurrent[model[id - 1].nft];
    }

    function _sync() internal {
        vm.warp(now_);
    }

    // ------------------------------------------------------------------ actions

    /// @dev Mostly short steps (requests live 1 hour .. 7 days), sometimes long jumps.
    function warp(uint256 secondsSeed) external {
        now_ += secondsSeed % 4 == 0 ? _bound(secondsSeed >> 2, 0, 8 days) : _bound(secondsSeed >> 2, 0, 3 hours);
        _sync();
        ++calls["warp"];
    }

    function submit(uint256 nftSeed, uint256 payloadSeed) external {
        _sync();
        address nft = nfts[nftSeed % NFT_COUNT];
        address sender = FakeNFT(nft).claimedOwner();

        bool expectOk = true;
        uint256[] memory lazy;
        uint256 lazyCount;
        if (modelCurrent[nft] == 0 && modelCapacity != 0) {
            uint256 used = modelUsed();
            if (used >= modelCapacity) {
                (lazy, lazyCount) = modelStalePrefix(MAX_LAZY_EXPIRATIONS);
                uint256 needed = used - modelCapacity + 1;
                if (lazyCount >= needed) lazyCount = needed;
                else expectOk = false;
            }
        }

        bytes memory payload = abi.encodePacked(payloadSeed | 1);
        vm.prank(sender);
        try requests.submitRequest(nft, payload) returns (uint256 id) {
            assertTrue(expectOk, "submit succeeded but the model expected a capacity refusal");
            assertEq(id, model.length + 1, "ids are array positions + 1");
            for (uint256 i = 0; i < lazyCount; ++i) {
                _modelExpire(lazy[i]);
            }
            uint256 previous = modelCurrent[nft];
            if (previous != 0) {
                model[previous - 1].status = EXPIRED;
                ++calls["submit.overwrite"];
            }
            model.push(ModelRequest({nft: nft, status: PENDING, submittedAt: now_}));
            modelCurrent[nft] = id;
            calls["submit.lazyExpired"] += lazyCount;
            ++calls["submit.ok"];
        } catch Error(string memory reason) {
            assertFalse(expectOk, string.concat("submit refused unexpectedly: ", reason));
            assertEq(reason, "No capacity available");
            ++calls["submit.refused"];
        }
    }

    function submitAsNonOwner(uint256 nftSeed, uint256 actorSeed) external {
        _sync();
        address nft = nfts[nftSeed % NFT_COUNT];
        address sender = actors[actorSeed % ACTOR_COUNT];
        if (sender == FakeNFT(nft).claimedOwner()) sender = broker;
        vm.prank(sender);
        try requests.submitRequest(nft, hex"01") {
            revert("a non-owner submitted a request");
        } catch Error(string memory reason) {
            assertEq(reason, "Sender does not own NFT contract");
        }
        ++calls["submitAsNonOwner"];
    }

    /// @dev Usually answers an NFT contract's current request, sometimes any id (including 0
    ///      and one past the end).
    function respond(uint256 nftSeed, uint256 idSeed) external {
        _sync();
        uint256 id = idSeed % 4 == 0 ? idSeed % (model.length + 2) : modelCurrent[nfts[nftSeed % NFT_COUNT]];
        bool expectOk = id != 0 && id <= model.length && model[id - 1].status == PENDING && !_stale(id)
            && modelCurrent[model[id - 1].nft] == id;
        vm.prank(broker);
        try requests.submitResponse(id, hex"0000000000000001ff") {
            assertTrue(expectOk, "respond succeeded unexpectedly");
            model[id - 1].status = APPROVED;
            ++calls["respond.ok"];
        } catch Error(string memory) {
            assertFalse(expectOk, "respond refused unexpectedly");
            ++calls["respond.refused"];
        }
    }

    function markExpired(uint256 seedA, uint256 seedB, uint256 seedC) external {
        _sync();
        uint256[] memory ids = new uint256[](3);
        (ids[0], ids[1], ids[2]) = (_pickId(seedA), _pickId(seedB), _pickId(seedC));
        requests.markExpired(ids);
        for (uint256 i = 0; i < 3; ++i) {
            uint256 id = ids[i];
            if (id != 0 && id <= model.length && model[id - 1].status == PENDING && _stale(id)) {
                _modelExpire(id);
                ++calls["markExpired.expired"];
            }
        }
        ++calls["markExpired"];
    }

    /// @dev Half the time some NFT contract's current request, else any id (0 and past-the-end
    ///      included). Duplicates within one markExpired call happen on purpose.
    function _pickId(uint256 seed) internal view returns (uint256) {
        if (seed % 2 == 0) return modelCurrent[nfts[(seed >> 1) % NFT_COUNT]];
        return (seed >> 1) % (model.length + 2);
    }

    function releaseByBroker(uint256 nftSeed) external {
        _sync();
        address nft = nfts[nftSeed % NFT_COUNT];
        uint256 current = modelCurrent[nft];
        vm.prank(broker);
        try requests.releaseAllocation(nft) {
            assertTrue(current != 0, "released a missing allocation");
            model[current - 1].status = EXPIRED;
            delete modelCurrent[nft];
            ++calls["releaseByBroker.ok"];
        } catch Error(string memory reason) {
            assertEq(current, 0, "release refused unexpectedly");
            assertEq(reason, "No allocation for this NFT contract");
            ++calls["releaseByBroker.refused"];
        }
    }

    function releaseByNftOwner(uint256 nftSeed, uint256 actorSeed) external {
        _sync();
        address nft = nfts[nftSeed % NFT_COUNT];
        address sender = actors[actorSeed % ACTOR_COUNT];
        bool isOwner = sender == FakeNFT(nft).claimedOwner();
        uint256 current = modelCurrent[nft];
        vm.prank(sender);
        try requests.releaseOwnAllocation(nft) {
            assertTrue(isOwner && current != 0, "releaseOwnAllocation succeeded unexpectedly");
            model[current - 1].status = EXPIRED;
            delete modelCurrent[nft];
            ++calls["releaseByNftOwner.ok"];
        } catch Error(string memory) {
            assertFalse(isOwner && current != 0, "releaseOwnAllocation refused unexpectedly");
            ++calls["releaseByNftOwner.refused"];
        }
    }

    function setCapacity(uint256 seed) external {
        _sync();
        uint256 capacity = seed % 6; // 0 = unlimited; small values keep the broker full often
        vm.prank(broker);
        requests.setTotalCapacity(capacity);
        modelCapacity = capacity;
        ++calls["setCapacity"];
    }

    function setExpiration(uint256 seed) external {
        _sync();
        uint256 expiration = _bound(seed, 1 hours, 7 days);
        vm.prank(broker);
        requests.setRequestExpirationTime(expiration);
        modelExpiration = expiration;
        ++calls["setExpiration"];
    }

    function transferNft(uint256 nftSeed, uint256 actorSeed) external {
        FakeNFT(nfts[nftSeed % NFT_COUNT]).setClaimedOwner(actors[actorSeed % ACTOR_COUNT]);
        ++calls["transferNft"];
    }
}
