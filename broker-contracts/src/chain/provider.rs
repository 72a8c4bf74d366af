//! The [`Connection`]: one provider per endpoint, built the way alloy's own
//! examples build theirs: alloy's `ClientBuilder` with tower layers (rate
//! limits retried with backoff by [`RetryBackoffLayer`], each request bounded
//! by [`TimeoutLayer`]), the chain id checked at connect, and a signer when
//! the connection sends transactions. No fillers: nonce, gas and fees are
//! chosen (and their failures classified) in [`super::sender`].

use std::{
    fmt,
    future::IntoFuture,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use alloy::{
    network::EthereumWallet,
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::{
        client::ClientBuilder,
        json_rpc::{RequestPacket, ResponsePacket},
    },
    signers::local::PrivateKeySigner,
    transports::{TransportError, TransportErrorKind, TransportFut, layers::RetryBackoffLayer},
};
use tower::{Layer, Service};

use super::{
    ChainError,
    error::{classify, classify_call, to_u64},
    redact::Endpoint,
};

/// Timeouts and limits; [`Default`] suits a public network.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// The longest one RPC request may take.
    pub rpc_timeout: Duration,
    /// How often a rate-limited request (HTTP 429/503, a node's rate-limit
    /// error) is sent again, with backoff, before it fails.
    pub rate_limit_retries: u32,
    /// How long a sent transaction may take to be mined.
    pub receipt_timeout: Duration,
    /// The longest pause between two receipt polls (they start at 100 ms
    /// and double).
    pub receipt_poll_max: Duration,
    /// Blocks per `eth_getLogs` call (public endpoints cap the range).
    pub log_range: u64,
    /// Added to the gas estimate of each transaction, in percent.
    pub gas_margin_percent: u64,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            rpc_timeout: Duration::from_secs(10),
            rate_limit_retries: 5,
            receipt_timeout: Duration::from_secs(180),
            receipt_poll_max: Duration::from_secs(2),
            log_range: 1000,
            gas_margin_percent: 25,
        }
    }
}

/// The first pause before a rate-limited request is sent again (the
/// endpoint's own hint, when it gives one, wins).
const RATE_LIMIT_BACKOFF_MS: u64 = 500;
/// The compute units per second assumed for the retry layer's queue (it
/// only matters while requests are being retried): about 500 requests/s.
const COMPUTE_UNITS_PER_SECOND: u64 = 10_000;

/// The error of a request the [`TimeoutLayer`] gave up on.
#[derive(Debug, thiserror::Error)]
#[error("no answer in {:.1}s", .0.as_secs_f64())]
pub struct RpcTimeout(pub Duration);

/// Bounds each RPC request in time; its error is a [`TransportError`]
/// holding [`RpcTimeout`], which [`ChainError`] reports as a slow endpoint.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer(pub Duration);

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeout: self.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<RequestPacket> for TimeoutService<S>
where
    S: Service<
            RequestPacket,
            Response = ResponsePacket,
            Error = TransportError,
            Future = TransportFut<'static>,
        >,
{
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        let answer = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, answer)
                .await
                .unwrap_or_else(|_| Err(TransportErrorKind::custom(RpcTimeout(timeout))))
        })
    }
}

/// A provider (signing when built with a signer) on the chain it was asked
/// for. Cheap to clone; clones share the provider, the send lock and the
/// stop flag.
#[derive(Clone)]
pub struct Connection {
    provider: DynProvider,
    endpoint: Arc<Endpoint>,
    chain_id: u64,
    signer: Option<Address>,
    /// Signs transactions here, so their hash is known (and can be
    /// recorded) before any node sees them.
    pub(crate) wallet: Option<EthereumWallet>,
    options: ChainOptions,
    /// Held from choosing a nonce until the node accepted the transaction,
    /// so concurrent sends from clones never pick the same nonce.
    pub(crate) send_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set when the owner is stopping: a receipt wait gives up then.
    stop: Arc<AtomicBool>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint.shown())
            .field("chain_id", &self.chain_id)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `rpc_url` and checks that it serves `chain_id`;
    /// transactions are signed by `signer` when given. A bad URL is
    /// [`ChainError::Config`], an unreachable endpoint
    /// [`ChainError::Transient`], another chain [`ChainError::WrongChain`].
    pub async fn connect(
        rpc_url: &str,
        chain_id: u64,
        signer: Option<PrivateKeySigner>,
        options: ChainOptions,
    ) -> Result<Connection, ChainError> {
        let connection = Self::unchecked(rpc_url, chain_id, signer, options)?;
        let actual = chain_id_of(&connection).await?;
        if actual != chain_id {
            return Err(ChainError::WrongChain {
                url: connection.endpoint.shown().to_string(),
                expected: chain_id,
                actual,
            });
        }
        Ok(connection)
    }

    /// The chain `rpc_url` serves: for a caller that does not know it yet
    /// (the set-up wizard asks the operator to confirm it).
    pub async fn chain_id_at(rpc_url: &str) -> Result<u64, ChainError> {
        let connection = Self::unchecked(rpc_url, 0, None, ChainOptions::default())?;
        chain_id_of(&connection).await
    }

    fn unchecked(
        rpc_url: &str,
        chain_id: u64,
        signer: Option<PrivateKeySigner>,
        options: ChainOptions,
    ) -> Result<Connection, ChainError> {
        let (endpoint, url) = Endpoint::parse(rpc_url)?;
        // The first layer is the outermost: every retry is timed anew. Only
        // rate limits are retried; a retried eth_sendRawTransaction resends
        // the same signed transaction, so at worst the node answers "already
        // known" (Transient: the caller checks the chain before sending
        // again).
        let client = ClientBuilder::default()
            .layer(RetryBackoffLayer::new(
                options.rate_limit_retries,
                RATE_LIMIT_BACKOFF_MS,
                COMPUTE_UNITS_PER_SECOND,
            ))
            .layer(TimeoutLayer(options.rpc_timeout))
            .http(url);
        let builder = ProviderBuilder::new().disable_recommended_fillers();
        let signer_address = signer.as_ref().map(PrivateKeySigner::address);
        let wallet = signer.map(EthereumWallet::from);
        let provider = match &wallet {
            Some(wallet) => builder
                .wallet(wallet.clone())
                .connect_client(client)
                .erased(),
            None => builder.connect_client(client).erased(),
        };
        Ok(Connection {
            provider,
            endpoint: Arc::new(endpoint),
            chain_id,
            signer: signer_address,
            wallet,
            options,
            send_lock: Arc::default(),
            stop: Arc::default(),
        })
    }

    /// Gives up waiting for receipts once `stop` is set (the owner is
    /// stopping: it must not wait out a slow chain).
    pub fn stop_on(mut self, stop: Arc<AtomicBool>) -> Connection {
        self.stop = stop;
        self
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The endpoint as errors show it (`scheme://host:port`).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The signer's address, if the connection has one.
    pub fn signer(&self) -> Option<Address> {
        self.signer
    }

    pub fn options(&self) -> &ChainOptions {
        &self.options
    }

    /// One RPC call, its failure classified; `call` names it in errors.
    pub async fn rpc<T>(
        &self,
        call: &str,
        fut: impl IntoFuture<Output = Result<T, TransportError>>,
    ) -> Result<T, ChainError> {
        fut.await.map_err(|e| classify(&self.endpoint, call, e))
    }

    /// One contract call through the generated bindings
    /// (`Contract::new(addr, conn.provider()).f(..).block(b).call()`); an
    /// answer that does not decode is [`ChainError::BadData`].
    pub async fn view<T>(
        &self,
        call: &str,
        fut: impl IntoFuture<Output = Result<T, alloy::contract::Error>>,
    ) -> Result<T, ChainError> {
        fut.await
            .map_err(|e| classify_call(&self.endpoint, call, e))
    }

    /// [`Self::view`] of a uint256 the broker keeps as a u64 (counts, ids,
    /// times); `what` names it when it does not fit.
    pub async fn view_u64(
        &self,
        call: &str,
        what: &str,
        fut: impl IntoFuture<Output = Result<U256, alloy::contract::Error>>,
    ) -> Result<u64, ChainError> {
        to_u64(call, what, self.view(call, fut).await?)
    }

    /// The code at `address` is not empty (a contract is deployed there);
    /// `what` names it in the error.
    pub async fn require_contract(&self, what: &str, address: Address) -> Result<(), ChainError> {
        let call = format!("eth_getCode({address})");
        let code = self.rpc(&call, self.provider.get_code_at(address)).await?;
        if code.is_empty() {
            return Err(ChainError::bad_data(
                &call,
                format!("no contract at {address} ({what}) on this chain"),
            ));
        }
        Ok(())
    }
}

async fn chain_id_of(connection: &Connection) -> Result<u64, ChainError> {
    connection
        .rpc("eth_chainId", connection.provider.get_chain_id())
        .await
}
