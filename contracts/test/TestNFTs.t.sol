// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "forge-std/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {TestNFT} from "../src/testing/TestNFT.sol";
import {FakeNFT} from "../src/testing/FakeNFT.sol";

contract TestNFTsTest is Test {
    address internal server = makeAddr("server");
    address internal other = makeAddr("other");

    function test_testNft_isAnOwnableERC721() public {
        TestNFT nft = new TestNFT(server);
        assertEq(nft.owner(), server);
        assertTrue(nft.supportsInterface(0x80ac58cd));
        assertTrue(nft.supportsInterface(0x01ffc9a7));
        assertEq(nft.name(), "BlockHost Test NFT");
        assertEq(nft.symbol(), "BHTEST");

        vm.prank(server);
        assertEq(nft.mint(other), 1);
        assertEq(nft.ownerOf(1), other);
        assertEq(nft.totalMinted(), 1);

        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, other));
        nft.mint(other);
    }

    function test_fakeNft_modes() public {
        FakeNFT fake = new FakeNFT(other, FakeNFT.Mode.ClaimsERC721);
        assertEq(fake.owner(), other);
        assertTrue(fake.supportsInterface(0x80ac58cd));
        assertFalse(fake.supportsInterface(0xffffffff));

        fake.setMode(FakeNFT.Mode.DeniesERC721);
        assertFalse(fake.supportsInterface(0x80ac58cd));

        fake.setMode(FakeNFT.Mode.RevertsInSupportsInterface);
        vm.expectRevert("FakeNFT: supportsInterface reverts");
        fake.supportsInterface(0x80ac58cd);

        fake.setMode(FakeNFT.Mode.MalformedSupportsInterface);
        (bool ok, bytes memory ret) =
            address(fake).staticcall(abi.encodeWithSelector(FakeNFT.supportsInterface.selector, bytes4(0x80ac58cd)));
        assertTrue(ok);
        assertEq(ret.length, 0);

        fake.setMode(FakeNFT.Mode.OwnerReverts);
        vm.expectRevert("FakeNFT: owner reverts");
        fake.owner();

        fake.setClaimedOwner(server);
        assertEq(fake.claimedOwner(), server);
    }
}
