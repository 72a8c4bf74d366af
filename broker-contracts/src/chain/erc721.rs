//! The NFT checks of `submitRequest`, repeated by the broker at the latest
//! block before it answers (ownership may have changed since submission).
//! They follow the contract's own rules exactly: `supportsInterface` counts
//! only when the call succeeds and its first answer word is exactly 1;
//! `owner()` only when the call succeeds and its first word is exactly the
//! requester's address (no dirty upper bytes).
//!
//! The NFT contracts are foreign (any contract a client names), so their
//! answers are declared as raw words and judged here by those rules; a
//! revert, any other failed execution or an answer too short to hold a word
//! is an answer too ("no"), as it is for the contract's `staticcall`.

use alloy::{
    eips::BlockId,
    primitives::{Address, FixedBytes, U256},
    providers::Provider as _,
    transports::RpcError,
};

use super::{
    ChainError, Connection,
    error::{classify, is_revert},
};

alloy::sol! {
    /// ERC-165's `supportsInterface`, as ERC-721 contracts answer it; the
    /// answer read as the word it is (`bool` would reject a 2, which the
    /// contract's rule counts as false, by a decoding error).
    #[sol(rpc)]
    interface IERC721 {
        function supportsInterface(bytes4 interfaceId) external view returns (uint256 answer);
    }

    /// OpenZeppelin's `Ownable.owner()`, the answer read as the word it is.
    #[sol(rpc)]
    interface Ownable {
        function owner() external view returns (uint256 word);
    }
}

/// ERC-165 interface id of ERC-721.
pub const ERC721_INTERFACE_ID: [u8; 4] = [0x80, 0xac, 0x58, 0xcd];

/// The outcome of [`Connection::verify_nft`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftCheck {
    /// An ERC-721 contract whose `owner()` is the requester.
    Ok,
    /// No code at the address.
    NoCode,
    /// `supportsInterface(0x80ac58cd)` is false, reverts or answers
    /// something other than `true`.
    NotErc721,
    /// `owner()` answers someone else.
    NotOwner { owner: Address },
    /// `owner()` reverts or answers something that is not an address.
    NoOwner,
}

impl Connection {
    /// At the latest block: code exists, ERC-165
    /// `supportsInterface(0x80ac58cd)` is exactly 1, `owner()` is exactly
    /// `requester`. Only trouble reaching the node is an error.
    pub async fn verify_nft(
        &self,
        nft: Address,
        requester: Address,
    ) -> Result<NftCheck, ChainError> {
        let call = format!("eth_getCode({nft})");
        let code = self.rpc(&call, self.provider().get_code_at(nft)).await?;
        if code.is_empty() {
            return Ok(NftCheck::NoCode);
        }

        let call = format!("supportsInterface(0x80ac58cd) on {nft}");
        let erc721 = IERC721::new(nft, self.provider());
        let answer = erc721
            .supportsInterface(FixedBytes(ERC721_INTERFACE_ID))
            .block(BlockId::latest())
            .call()
            .await;
        if self.word(&call, answer)? != Some(U256::from(1)) {
            return Ok(NftCheck::NotErc721);
        }

        let call = format!("owner() on {nft}");
        let answer = Ownable::new(nft, self.provider())
            .owner()
            .block(BlockId::latest())
            .call()
            .await;
        Ok(match self.word(&call, answer)?.and_then(as_address) {
            None => NftCheck::NoOwner,
            Some(owner) if owner == requester => NftCheck::Ok,
            Some(owner) => NftCheck::NotOwner { owner },
        })
    }

    /// The first answer word, or None when the call failed in the contract
    /// (a revert, or one the node names otherwise: out of gas, invalid
    /// opcode) or answered less than a word.
    fn word(
        &self,
        call: &str,
        answer: Result<U256, alloy::contract::Error>,
    ) -> Result<Option<U256>, ChainError> {
        match answer {
            Ok(word) => Ok(Some(word)),
            Err(alloy::contract::Error::TransportError(RpcError::ErrorResp(payload)))
                if is_revert(payload.code, &payload.message)
                    || is_execution_failure(&payload.message) =>
            {
                Ok(None)
            }
            Err(alloy::contract::Error::TransportError(e)) => {
                Err(classify(self.endpoint(), call, e))
            }
            Err(_) => Ok(None),
        }
    }
}

fn is_execution_failure(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "out of gas",
        "invalid opcode",
        "stack underflow",
        "stack overflow",
        "invalid jump",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The word as an address when its upper 12 bytes are zero.
fn as_address(word: U256) -> Option<Address> {
    let bytes = word.to_be_bytes::<32>();
    bytes[..12]
        .iter()
        .all(|&b| b == 0)
        .then(|| Address::from_slice(&bytes[12..]))
}

#[cfg(test)]
mod tests {
    use alloy::sol_types::SolCall as _;

    use super::*;
    use crate::TestNFT;

    #[test]
    fn the_minimal_interface_calls_what_erc721_contracts_define() {
        assert_eq!(
            IERC721::supportsInterfaceCall::SELECTOR,
            TestNFT::supportsInterfaceCall::SELECTOR
        );
        assert_eq!(Ownable::ownerCall::SELECTOR, TestNFT::ownerCall::SELECTOR);
    }

    #[test]
    fn words_follow_the_contracts_rules() {
        let decode = |out: &[u8]| IERC721::supportsInterfaceCall::abi_decode_returns(out).ok();
        let mut w = [0u8; 32];
        assert_eq!(decode(&w), Some(U256::ZERO));
        w[31] = 1;
        assert_eq!(decode(&w), Some(U256::from(1)));
        w[0] = 1;
        assert_ne!(decode(&w), Some(U256::from(1)), "only exactly 1 is true");
        // Less than a word is no answer; more than one, the first word.
        assert_eq!(decode(&[1u8; 31]), None);
        let mut long = [0u8; 40];
        long[31] = 1;
        assert_eq!(decode(&long), Some(U256::from(1)));

        let mut w = [0u8; 32];
        w[12..].copy_from_slice(Address::repeat_byte(0x42).as_slice());
        assert_eq!(
            as_address(U256::from_be_bytes(w)),
            Some(Address::repeat_byte(0x42))
        );
        w[11] = 1;
        assert_eq!(
            as_address(U256::from_be_bytes(w)),
            None,
            "dirty upper bytes are not an address"
        );
    }

    #[test]
    fn execution_failures() {
        assert!(is_execution_failure("out of gas"));
        assert!(is_execution_failure(
            "EVM error InvalidOpcode / invalid opcode: 0xfe"
        ));
        assert!(!is_execution_failure("header not found"));
    }
}
