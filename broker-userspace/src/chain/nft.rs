//! The NFT checks of `submitRequest`, repeated by the broker at the latest
//! block before it answers (ownership may have changed since submission).
//! They follow the contract's own rules exactly: `supportsInterface` counts
//! only when the call succeeds and its first answer word is exactly 1;
//! `owner()` only when the call succeeds and its first word is exactly the
//! requester's address (no dirty upper bytes).

use alloy::{
    eips::BlockId,
    network::TransactionBuilder as _,
    primitives::{Address, FixedBytes},
    providers::Provider,
    rpc::types::TransactionRequest,
    sol_types::SolCall,
    transports::RpcError,
};
use broker_contracts::TestNFT;

use super::{Chain, ChainError, is_revert};

/// ERC-165 interface id of ERC-721.
const ERC721_INTERFACE_ID: [u8; 4] = [0x80, 0xac, 0x58, 0xcd];

/// The outcome of [`Chain::verify_nft`].
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

/// How an `eth_call` to the NFT contract ended: a revert (or any failed
/// execution) is an answer here, not an error.
enum Outcome {
    Returned(Vec<u8>),
    Failed,
}

impl Chain {
    /// At the latest block: code exists, ERC-165
    /// `supportsInterface(0x80ac58cd)` is true (a revert counts as false),
    /// `owner()` is `requester`. Only trouble reaching the node is an error.
    pub async fn verify_nft(
        &self,
        nft: Address,
        requester: Address,
    ) -> Result<NftCheck, ChainError> {
        let call = format!("eth_getCode({nft})");
        let code = self.rpc(&call, self.provider.get_code_at(nft)).await?;
        if code.is_empty() {
            return Ok(NftCheck::NoCode);
        }

        let data = TestNFT::supportsInterfaceCall {
            interfaceId: FixedBytes(ERC721_INTERFACE_ID),
        };
        let call = format!("supportsInterface(0x80ac58cd) on {nft}");
        let supported = match self.nft_call(&call, nft, data.abi_encode()).await? {
            Outcome::Returned(out) => first_word(&out).is_some_and(|w| is_one(&w)),
            Outcome::Failed => false,
        };
        if !supported {
            return Ok(NftCheck::NotErc721);
        }

        let call = format!("owner() on {nft}");
        let owner = match self
            .nft_call(&call, nft, TestNFT::ownerCall {}.abi_encode())
            .await?
        {
            Outcome::Returned(out) => first_word(&out).and_then(|w| as_address(&w)),
            Outcome::Failed => None,
        };
        Ok(match owner {
            None => NftCheck::NoOwner,
            Some(owner) if owner == requester => NftCheck::Ok,
            Some(owner) => NftCheck::NotOwner { owner },
        })
    }

    /// `eth_call` at the latest block where a failed execution (a revert,
    /// or one the node names otherwise: out of gas, invalid opcode) is an
    /// answer, as it is for the contract's `staticcall`.
    async fn nft_call(
        &self,
        call: &str,
        nft: Address,
        input: Vec<u8>,
    ) -> Result<Outcome, ChainError> {
        let tx = TransactionRequest::default().with_to(nft).with_input(input);
        match self
            .timed(call, self.provider.call(tx).block(BlockId::latest()))
            .await?
        {
            Ok(out) => Ok(Outcome::Returned(out.to_vec())),
            Err(RpcError::ErrorResp(payload))
                if is_revert(payload.code, &payload.message)
                    || is_execution_failure(&payload.message) =>
            {
                Ok(Outcome::Failed)
            }
            Err(e) => Err(self.classify(call, e)),
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

fn first_word(out: &[u8]) -> Option<[u8; 32]> {
    out.get(..32).map(|w| w.try_into().expect("32 bytes"))
}

fn is_one(word: &[u8; 32]) -> bool {
    word[..31].iter().all(|&b| b == 0) && word[31] == 1
}

fn as_address(word: &[u8; 32]) -> Option<Address> {
    word[..12]
        .iter()
        .all(|&b| b == 0)
        .then(|| Address::from_slice(&word[12..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_the_contracts_rules() {
        let mut w = [0u8; 32];
        assert!(!is_one(&w));
        w[31] = 1;
        assert!(is_one(&w));
        w[0] = 1;
        assert!(!is_one(&w), "only exactly 1 is true");
        w = [0u8; 32];
        w[31] = 2;
        assert!(!is_one(&w));

        assert_eq!(first_word(&[1u8; 31]), None);
        assert_eq!(first_word(&[1u8; 40]), Some([1u8; 32]));

        let mut w = [0u8; 32];
        w[12..].copy_from_slice(Address::repeat_byte(0x42).as_slice());
        assert_eq!(as_address(&w), Some(Address::repeat_byte(0x42)));
        w[11] = 1;
        assert_eq!(as_address(&w), None, "dirty upper bytes are not an address");
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
