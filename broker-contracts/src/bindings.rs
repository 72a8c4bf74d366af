//! One `sol!` per contract, read from its committed artifact (ABI and
//! bytecode), so no ABI is ever written by hand.
#![allow(clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    BrokerRegistry,
    "../contracts/artifacts/BrokerRegistry.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    BrokerRequests,
    "../contracts/artifacts/BrokerRequests.json"
);

alloy::sol!(
    /// The legacy (V1) requests contract, still monitored for old clients.
    #[sol(rpc)]
    #[derive(Debug)]
    IBrokerRequestsV1,
    "../contracts/artifacts/IBrokerRequestsV1.json"
);

/// A V1 implementation, for tests of legacy monitoring. In a module of its
/// own: its ABI names `IBrokerRequestsV1.Request`, which `sol!` turns into a
/// second `IBrokerRequestsV1` item.
pub mod legacy_fixture {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        BrokerRequestsV1,
        "../contracts/artifacts/BrokerRequestsV1.json"
    );
}

alloy::sol!(
    /// An ERC-721 + Ownable contract standing in for a BlockHost server's NFT.
    #[sol(rpc)]
    #[derive(Debug)]
    TestNFT,
    "../contracts/artifacts/TestNFT.json"
);

alloy::sol!(
    /// An NFT contract that lies (wrong owner, or no ERC-721), for negative tests.
    #[sol(rpc)]
    #[derive(Debug)]
    FakeNFT,
    "../contracts/artifacts/FakeNFT.json"
);

/// NFT contracts that pass the contract's checks and attack the broker's
/// (a gas loop, a huge answer, a revert only for free calls, self-destructed
/// after its request), and the fixture that makes the last one.
pub mod hostile_fixture {
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        HostileNFT,
        "../contracts/artifacts/HostileNFT.json"
    );

    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        SelfDestructingRequester,
        "../contracts/artifacts/SelfDestructingRequester.json"
    );
}
