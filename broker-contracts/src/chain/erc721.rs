//! The NFT checks of `submitRequest`, repeated by the broker at the latest
//! block before it answers (ownership may have changed since submission).
//! They follow the contract's own rules: `supportsInterface` counts only
//! when the call succeeds and its first answer word is exactly 1; `owner()`
//! only when the call succeeds and its first word is exactly the
//! requester's address (no dirty upper bytes).
//!
//! The NFT contracts are foreign (any contract a client names), so each
//! call is raw and bounded: at most [`NFT_CALL_GAS`] gas (a contract that
//! loops fails fast, as it would in the contract's own `staticcall` short of
//! gas) and an answer of at most [`NFT_MAX_RETURN`] bytes (an honest one is
//! one word). Every failure the node reports for the call's execution (a
//! revert, out of gas, an invalid opcode, whatever the node calls it) is
//! an answer too: "no", a silent rejection, never retried. Only trouble
//! reaching the node (transport, timeouts, rate limits, missing state) is
//! an error.

use alloy::{
    eips::BlockId,
    network::TransactionBuilder as _,
    primitives::{Address, Bytes, U256},
    providers::Provider as _,
    rpc::types::TransactionRequest,
    sol_types::SolCall as _,
    transports::RpcError,
};

use super::{ChainError, Connection, error::classify};

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

/// The gas each NFT call may use. OpenZeppelin's `owner()` and
/// `supportsInterface` need a few thousand; a contract needing more than
/// this is answered "no".
pub const NFT_CALL_GAS: u64 = 100_000;

/// The longest answer read from an NFT call, in bytes; a longer one is
/// answered "no".
pub const NFT_MAX_RETURN: usize = 1024;

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
        let input = IERC721::supportsInterfaceCall {
            interfaceId: ERC721_INTERFACE_ID.into(),
        }
        .abi_encode();
        if self.nft_word(&call, nft, input.into()).await? != Some(U256::from(1)) {
            return Ok(NftCheck::NotErc721);
        }

        let call = format!("owner() on {nft}");
        let input = Ownable::ownerCall {}.abi_encode();
        Ok(
            match self
                .nft_word(&call, nft, input.into())
                .await?
                .and_then(as_address)
            {
                None => NftCheck::NoOwner,
                Some(owner) if owner == requester => NftCheck::Ok,
                Some(owner) => NftCheck::NotOwner { owner },
            },
        )
    }

    /// The first answer word of `input` called on `nft` with
    /// [`NFT_CALL_GAS`], or None when the call failed in the contract or
    /// answered less than a word or more than [`NFT_MAX_RETURN`] bytes.
    async fn nft_word(
        &self,
        call: &str,
        nft: Address,
        input: Bytes,
    ) -> Result<Option<U256>, ChainError> {
        let tx = TransactionRequest::default()
            .with_to(nft)
            .with_input(input)
            .with_gas_limit(NFT_CALL_GAS);
        match self.provider().call(tx).block(BlockId::latest()).await {
            Ok(out) => Ok(first_word(&out)),
            Err(RpcError::ErrorResp(payload))
                if !is_node_trouble(payload.code, &payload.message) =>
            {
                tracing::debug!(call, code = payload.code, message = %payload.message, "the NFT call failed: answered no");
                Ok(None)
            }
            Err(e) => Err(classify(self.endpoint(), call, e)),
        }
    }
}

/// The first word of an answer of one word up to [`NFT_MAX_RETURN`] bytes.
fn first_word(out: &[u8]) -> Option<U256> {
    (32..=NFT_MAX_RETURN)
        .contains(&out.len())
        .then(|| U256::from_be_slice(&out[..32]))
}

/// A node's error answer about itself rather than the call's execution:
/// rate limits, missing state, overload. Retried later; every other error
/// answer to an NFT call is the contract's failure.
fn is_node_trouble(code: i64, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    // -32005: "limit exceeded" (EIP-1474); 429: some gateways' own code.
    code == -32005
        || code == 429
        || [
            "rate limit",
            "limit exceeded",
            "too many requests",
            "header not found",
            "unknown block",
            "missing trie node",
            "state is not available",
            "timeout",
            "timed out",
            "busy",
            "unavailable",
            "try again",
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
    fn answers_longer_than_the_cap_or_shorter_than_a_word_are_no() {
        let mut word = [0u8; 32];
        word[31] = 7;
        assert_eq!(first_word(&word), Some(U256::from(7)));
        assert_eq!(first_word(&word[..31]), None);
        let mut long = vec![0u8; NFT_MAX_RETURN];
        long[31] = 7;
        assert_eq!(first_word(&long), Some(U256::from(7)));
        long.push(0);
        assert_eq!(first_word(&long), None, "one byte over the cap");
    }

    #[test]
    fn only_the_nodes_own_trouble_is_retried() {
        assert!(is_node_trouble(-32005, "limit exceeded"));
        assert!(is_node_trouble(-32000, "header not found"));
        assert!(is_node_trouble(-32000, "missing trie node abc"));
        assert!(!is_node_trouble(-32000, "out of gas"));
        assert!(!is_node_trouble(3, "execution reverted"));
        assert!(!is_node_trouble(
            -32003,
            "EVM error InvalidOpcode / invalid opcode: 0xfe"
        ));
        assert!(!is_node_trouble(
            -32000,
            "EVM error StateChangeDuringStaticCall"
        ));
        assert!(!is_node_trouble(-32603, "CreateContractSizeLimit"));
    }
}
