//! Reads of a requests contract. V2 (`BrokerRequests`) and the legacy V1
//! contracts share every function read here, signature for signature (the
//! tests assert the selectors), so one code path serves both.

use alloy::providers::DynProvider;
use alloy::{
    eips::BlockId,
    primitives::{Address, U256},
};
use broker_contracts::{BrokerRequests, chain::to_u64};

use super::{BlockRef, Chain, ChainError};

alloy::sol! {
    /// `getRequest` with its answer's status read as a plain word: the same
    /// ABI encoding as the contracts' `Request` (an enum is a uint8, one
    /// word), but an unknown status becomes a clear error instead of a
    /// decoding failure, and a foreign contract cannot make decoding panic.
    #[sol(rpc)]
    interface LenientRequests {
        struct RawRequest {
            uint256 id;
            address requester;
            address nftContract;
            bytes encryptedPayload;
            uint256 status;
            bytes responsePayload;
            uint256 submittedAt;
            uint256 respondedAt;
        }

        function getRequest(uint256 requestId) external view returns (RawRequest memory);
    }
}

/// `enum RequestStatus` of the contracts (uint8 0..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    Pending,
    Approved,
    /// Never assigned by the contracts (rejections are silent); kept for
    /// the ABI.
    Rejected,
    Expired,
}

impl RequestStatus {
    /// The ABI value, or None for a value the contracts do not define.
    pub fn from_abi(value: U256) -> Option<Self> {
        match u8::try_from(value).ok()? {
            0 => Some(RequestStatus::Pending),
            1 => Some(RequestStatus::Approved),
            2 => Some(RequestStatus::Rejected),
            3 => Some(RequestStatus::Expired),
            _ => None,
        }
    }
}

/// One request as the contract holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnchainRequest {
    pub id: u64,
    pub requester: Address,
    /// Authoritative (never the payload's copy).
    pub nft_contract: Address,
    pub encrypted_payload: Vec<u8>,
    pub status: RequestStatus,
    /// The framed response (8-byte big-endian id ‖ ciphertext); empty until
    /// answered.
    pub response_payload: Vec<u8>,
    /// Block timestamps, seconds.
    pub submitted_at: u64,
    /// The time of the last status change (0 while pending).
    pub responded_at: u64,
}

impl OnchainRequest {
    fn from_raw(
        call: &str,
        asked: u64,
        raw: LenientRequests::RawRequest,
    ) -> Result<Self, ChainError> {
        let id = to_u64(call, "request id", raw.id)?;
        if id != asked {
            return Err(ChainError::bad_data(
                call,
                format!("the contract answered with request {id}"),
            ));
        }
        let status = RequestStatus::from_abi(raw.status).ok_or_else(|| {
            ChainError::bad_data(
                call,
                format!(
                    "status {} is not a RequestStatus (0 Pending, 1 Approved, 2 Rejected, 3 Expired)",
                    raw.status
                ),
            )
        })?;
        Ok(OnchainRequest {
            id,
            requester: raw.requester,
            nft_contract: raw.nftContract,
            encrypted_payload: raw.encryptedPayload.to_vec(),
            status,
            response_payload: raw.responsePayload.to_vec(),
            submitted_at: to_u64(call, "submittedAt", raw.submittedAt)?,
            responded_at: to_u64(call, "respondedAt", raw.respondedAt)?,
        })
    }
}

impl Chain {
    pub(super) fn requests(
        &self,
        contract: Address,
    ) -> BrokerRequests::BrokerRequestsInstance<&DynProvider> {
        BrokerRequests::new(contract, self.conn.provider())
    }

    /// `getRequestCount()` at `at`.
    pub async fn request_count(&self, contract: Address, at: &BlockRef) -> Result<u64, ChainError> {
        let call = format!("getRequestCount() on {contract} at block {}", at.number);
        let requests = self.requests(contract);
        let count = requests.getRequestCount().block(at.id());
        self.conn
            .view_u64(&call, "request count", count.call())
            .await
    }

    /// `getRequest(id)` at `at` (V2 and V1 alike). An id outside
    /// 1..=count is [`ChainError::Reverted`] ("Invalid request ID").
    pub async fn request(
        &self,
        contract: Address,
        id: u64,
        at: &BlockRef,
    ) -> Result<OnchainRequest, ChainError> {
        let call = format!("getRequest({id}) on {contract} at block {}", at.number);
        self.request_at(&call, contract, id, at.id()).await
    }

    async fn request_at(
        &self,
        call: &str,
        contract: Address,
        id: u64,
        block: BlockId,
    ) -> Result<OnchainRequest, ChainError> {
        let lenient = LenientRequests::new(contract, self.conn.provider());
        let raw = self
            .conn
            .view(call, lenient.getRequest(U256::from(id)).block(block).call())
            .await?;
        OnchainRequest::from_raw(call, id, raw)
    }

    /// `nftContractToRequestId(nft)` at `at`: the NFT contract's current
    /// request, 0 for none.
    pub async fn current_request_id(
        &self,
        contract: Address,
        nft: Address,
        at: &BlockRef,
    ) -> Result<u64, ChainError> {
        let call = format!(
            "nftContractToRequestId({nft}) on {contract} at block {}",
            at.number
        );
        let requests = self.requests(contract);
        let id = requests.nftContractToRequestId(nft);
        self.conn
            .view_u64(&call, "request id", id.block(at.id()).call())
            .await
    }

    /// `requestExpirationTime()` at `at`, seconds.
    pub async fn expiration_time(
        &self,
        contract: Address,
        at: &BlockRef,
    ) -> Result<u64, ChainError> {
        let call = format!(
            "requestExpirationTime() on {contract} at block {}",
            at.number
        );
        let requests = self.requests(contract);
        let secs = requests.requestExpirationTime();
        self.conn
            .view_u64(&call, "expiration time", secs.block(at.id()).call())
            .await
    }

    /// The response already on chain for request `id`, read at the LATEST
    /// block (not the safe one): what the daemon checks before sending after
    /// a crash or a failed attempt. Some whenever a response was stored —
    /// also when the request was later released or overwritten (it is then
    /// Expired but keeps its response) — since only `submitResponse` stores
    /// one. None when the request was never answered.
    pub async fn response_on_chain(
        &self,
        contract: Address,
        id: u64,
    ) -> Result<Option<Vec<u8>>, ChainError> {
        let call = format!("getRequest({id}) on {contract} at the latest block");
        let request = self
            .request_at(&call, contract, id, BlockId::latest())
            .await?;
        Ok((!request.response_payload.is_empty()).then_some(request.response_payload))
    }
}

#[cfg(test)]
mod tests {
    use alloy::{primitives::Bytes, sol_types::SolCall as _};
    use broker_contracts::IBrokerRequestsV1;

    use super::*;

    #[test]
    fn selectors_match_both_contract_versions() {
        let get = LenientRequests::getRequestCall::SELECTOR;
        assert_eq!(get, BrokerRequests::getRequestCall::SELECTOR);
        assert_eq!(get, IBrokerRequestsV1::getRequestCall::SELECTOR);
        assert_eq!(
            BrokerRequests::getRequestCountCall::SELECTOR,
            IBrokerRequestsV1::getRequestCountCall::SELECTOR
        );
        assert_eq!(
            BrokerRequests::nftContractToRequestIdCall::SELECTOR,
            IBrokerRequestsV1::nftContractToRequestIdCall::SELECTOR
        );
        assert_eq!(
            BrokerRequests::requestExpirationTimeCall::SELECTOR,
            IBrokerRequestsV1::requestExpirationTimeCall::SELECTOR
        );
        assert_eq!(
            BrokerRequests::submitResponseCall::SELECTOR,
            IBrokerRequestsV1::submitResponseCall::SELECTOR
        );
        assert_eq!(
            BrokerRequests::releaseAllocationCall::SELECTOR,
            IBrokerRequestsV1::releaseAllocationCall::SELECTOR
        );
    }

    fn v2_request(status: u8) -> BrokerRequests::Request {
        BrokerRequests::Request {
            id: U256::from(7),
            requester: Address::repeat_byte(1),
            nftContract: Address::repeat_byte(2),
            encryptedPayload: Bytes::from_static(b"request"),
            status,
            responsePayload: Bytes::from_static(b"response"),
            submittedAt: U256::from(1_700_000_000u64),
            respondedAt: U256::from(1_700_000_060u64),
        }
    }

    #[test]
    fn lenient_decoding_reads_what_the_bindings_encode() {
        for (status, expected) in [
            (0, RequestStatus::Pending),
            (1, RequestStatus::Approved),
            (2, RequestStatus::Rejected),
            (3, RequestStatus::Expired),
        ] {
            let out = BrokerRequests::getRequestCall::abi_encode_returns(&v2_request(status));
            let raw = LenientRequests::getRequestCall::abi_decode_returns(&out).unwrap();
            let request = OnchainRequest::from_raw("c", 7, raw).unwrap();
            assert_eq!(
                request,
                OnchainRequest {
                    id: 7,
                    requester: Address::repeat_byte(1),
                    nft_contract: Address::repeat_byte(2),
                    encrypted_payload: b"request".to_vec(),
                    status: expected,
                    response_payload: b"response".to_vec(),
                    submitted_at: 1_700_000_000,
                    responded_at: 1_700_000_060,
                }
            );
        }
    }

    fn raw() -> LenientRequests::RawRequest {
        let out = BrokerRequests::getRequestCall::abi_encode_returns(&v2_request(0));
        LenientRequests::getRequestCall::abi_decode_returns(&out).unwrap()
    }

    #[test]
    fn odd_values_are_errors() {
        let mut r = raw();
        r.status = U256::from(4);
        let e = OnchainRequest::from_raw("getRequest(7) on X", 7, r).unwrap_err();
        assert!(matches!(e, ChainError::BadData { .. }));
        assert!(
            e.to_string().contains("status 4 is not a RequestStatus"),
            "{e}"
        );

        let mut r = raw();
        r.status = U256::MAX;
        assert!(OnchainRequest::from_raw("c", 7, r).is_err());

        let mut r = raw();
        r.id = U256::from(u64::MAX) + U256::from(1);
        let e = OnchainRequest::from_raw("c", 7, r).unwrap_err();
        assert!(e.to_string().contains("does not fit in 64 bits"), "{e}");

        let e = OnchainRequest::from_raw("c", 8, raw()).unwrap_err();
        assert!(e.to_string().contains("answered with request 7"), "{e}");

        let mut r = raw();
        r.submittedAt = U256::MAX;
        assert!(OnchainRequest::from_raw("c", 7, r).is_err());
    }
}
