//! What the daemon decided for each on-chain request, and how far it got.
//!
//! A request's record moves forward only: `Allocated` (a prefix is reserved;
//! the kernel is set up and the answer sent after the commit) → `Answered`;
//! or it ends at once as `Rejected` (invalid: silent, never answered, never
//! retried) or `Skipped` (no longer pending when read, or no longer
//! answerable). A transient failure parks it in `Retry` without holding up
//! the requests behind it. Unfinished requests are also listed in a small
//! table of their own, so a restart resumes them without scanning the whole
//! history.
//!
//! Between `Allocated` and `Answered`, `Sent` records the answer's
//! transaction (hash, nonce, fees) before it is broadcast: a restart, a
//! receipt that did not come in time or a dropped transaction never leads
//! to a second answer at another nonce. The next polls look that
//! transaction up without waiting: mined (done), pending (wait, or replace
//! it at the same nonce with higher fees once it is overdue), dropped
//! (replace it at the same nonce), or its nonce taken by another
//! transaction (then the chain, asked at its latest block, says whether
//! the request still needs an answer).

use alloy::primitives::{Address, TxHash};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    Reads, Store, StoreError,
    allocations::{self, Allocate, Allocation},
    audit::{self, Event},
    collect, cursors, decode, encode, now, reorgs,
};

const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
const UNFINISHED: TableDefinition<&[u8], ()> = TableDefinition::new("requests_unfinished");

/// The longest reason or error a record keeps, in bytes: they can quote what
/// a request's submitter chose (a payload's parse error, an NFT contract's
/// answer), and a record must not grow with it.
pub const MAX_REASON_BYTES: usize = 512;

/// `text` cut to [`MAX_REASON_BYTES`] at a character boundary, marked so.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What [`Stage::Answered`] records when the answer was found on chain
/// rather than sent by this run (an earlier run sent it).
pub const FOUND_ON_CHAIN: &str = "found on chain";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Invalid: never answered, never retried.
    Rejected { reason: String },
    /// Nothing to do: not pending, expired or superseded when read, or the
    /// answer was refused on chain.
    Skipped { reason: String },
    /// A prefix is reserved; the answer is still to be sent, encrypted to
    /// `server_pubkey` (kept so that a restart can still send it).
    Allocated {
        #[serde(with = "super::slot_string")]
        slot: u128,
        #[serde(with = "super::hex_bytes")]
        server_pubkey: [u8; 65],
    },
    /// The answer's transaction `tx` is signed at `nonce` with these fees
    /// (wei per gas) and was broadcast, or is about to be; its receipt is
    /// still to be seen.
    Sent {
        #[serde(with = "super::slot_string")]
        slot: u128,
        #[serde(with = "super::hex_bytes")]
        server_pubkey: [u8; 65],
        tx: TxHash,
        nonce: u64,
        #[serde(with = "super::slot_string")]
        max_fee_per_gas: u128,
        #[serde(with = "super::slot_string")]
        max_priority_fee_per_gas: u128,
    },
    /// The answer is on chain: sent in `transaction`, or [`FOUND_ON_CHAIN`].
    Answered {
        #[serde(with = "super::slot_string")]
        slot: u128,
        transaction: String,
    },
    /// Waiting after a transient failure (RPC, nonce, gas, a full pool).
    Retry {
        attempts: u32,
        next_at: u64,
        last_error: String,
    },
}

impl Stage {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Stage::Rejected { .. } | Stage::Skipped { .. } | Stage::Answered { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub contract: Address,
    pub id: u64,
    pub stage: Stage,
    pub updated_at: u64,
}

/// What examining a request found: the input of [`Store::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not judged: the chain could not be read (why). Retried later.
    Unknown(String),
    /// Nothing to do: no longer pending, expired or superseded.
    Skip(String),
    /// Invalid: recorded with why, never answered, never retried.
    Reject(String),
    /// Valid: `nft` asks for a prefix for `wg_key`; the answer goes
    /// encrypted to `server_pubkey`.
    Valid {
        nft: Address,
        wg_key: [u8; 32],
        server_pubkey: [u8; 65],
    },
}

/// What [`Store::decide`] recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved once: boxing the grant would buy nothing"
)]
pub enum Decision {
    /// The request was finished already: nothing changed.
    AlreadyFinished,
    /// Invalid (why): never answered, never retried.
    Rejected(String),
    /// Nothing to do (why).
    Skipped(String),
    /// Deferred after a transient failure.
    Retry {
        attempts: u32,
        next_at: u64,
        last_error: String,
    },
    /// A prefix is the request's: set it up, then answer.
    Granted(Grant),
}

impl Decision {
    /// The stage the request is recorded at; None when it stays as it was.
    fn stage(&self) -> Option<Stage> {
        Some(match self {
            Decision::AlreadyFinished => return None,
            Decision::Rejected(reason) => Stage::Rejected {
                reason: reason.clone(),
            },
            Decision::Skipped(reason) => Stage::Skipped {
                reason: reason.clone(),
            },
            Decision::Retry {
                attempts,
                next_at,
                last_error,
            } => Stage::Retry {
                attempts: *attempts,
                next_at: *next_at,
                last_error: last_error.clone(),
            },
            Decision::Granted(grant) => Stage::Allocated {
                slot: grant.allocation.slot,
                server_pubkey: grant.server_pubkey,
            },
        })
    }
}

/// A transaction recorded before it was broadcast: an answer's (as
/// [`Stage::Sent`] records it) or an on-chain release's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTx {
    pub tx: TxHash,
    pub nonce: u64,
    #[serde(with = "super::slot_string")]
    pub max_fee_per_gas: u128,
    #[serde(with = "super::slot_string")]
    pub max_priority_fee_per_gas: u128,
}

/// A prefix granted to a request, committed, the kernel not set up yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub allocation: Allocation,
    /// The NFT's previous WireGuard key, when this request rotated it: its
    /// peer is to go.
    pub old_wg_key: Option<[u8; 32]>,
    pub server_pubkey: [u8; 65],
}

/// A request's key in every table keyed by request: contract ‖ id
/// (big-endian, so a contract's requests are in id order).
pub(super) fn key(contract: Address, id: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..20].copy_from_slice(contract.as_slice());
    k[20..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(REQUESTS)?;
    txn.open_table(UNFINISHED)?;
    Ok(())
}

fn answered(
    txn: &WriteTransaction,
    contract: Address,
    id: u64,
    slot: u128,
    transaction: Option<TxHash>,
    handshake_timeout: u64,
) -> Result<(), StoreError> {
    let transaction = transaction.map_or_else(|| FOUND_ON_CHAIN.to_string(), |t| t.to_string());
    allocations::await_handshake(txn, slot, handshake_timeout, true)?;
    set(
        txn,
        contract,
        id,
        Stage::Answered {
            slot,
            transaction: transaction.clone(),
        },
    )?;
    audit::record(
        txn,
        Event::Answered {
            contract: contract.to_string(),
            request_id: id,
            transaction,
        },
    )
}

fn get(txn: &impl Reads, contract: Address, id: u64) -> Result<Option<Record>, StoreError> {
    let table = txn.table(REQUESTS)?;
    let k = key(contract, id);
    let value = table.get(k.as_slice())?;
    value
        .map(|v| decode("requests", format!("{contract}/{id}"), v.value()))
        .transpose()
}

/// Records a request's new stage.
pub(super) fn set(
    txn: &WriteTransaction,
    contract: Address,
    id: u64,
    stage: Stage,
) -> Result<(), StoreError> {
    let k = key(contract, id);
    let finished = stage.is_finished();
    let record = Record {
        contract,
        id,
        stage,
        updated_at: now(),
    };
    txn.open_table(REQUESTS)?
        .insert(k.as_slice(), encode(&record).as_slice())?;
    let mut unfinished = txn.open_table(UNFINISHED)?;
    if finished {
        unfinished.remove(k.as_slice())?;
    } else {
        unfinished.insert(k.as_slice(), ())?;
    }
    Ok(())
}

/// Removes request `id`'s record, finished or not (see
/// [`Store::forget_request`]).
pub(super) fn remove(txn: &WriteTransaction, contract: Address, id: u64) -> Result<(), StoreError> {
    let k = key(contract, id);
    txn.open_table(REQUESTS)?.remove(k.as_slice())?;
    txn.open_table(UNFINISHED)?.remove(k.as_slice())?;
    Ok(())
}

/// The ids of `contract`'s records from `from` on, in order.
pub(super) fn ids_from(
    txn: &impl Reads,
    contract: Address,
    from: u64,
) -> Result<Vec<u64>, StoreError> {
    let table = txn.table(REQUESTS)?;
    let (from, to) = (key(contract, from), key(contract, u64::MAX));
    collect(table.range(from.as_slice()..=to.as_slice())?, |k, _| {
        Ok(u64::from_be_bytes(
            k[20..].try_into().expect("28-byte keys"),
        ))
    })
}

/// Removes the finished records last changed before `cutoff` (seconds since
/// the epoch); says how many. Unfinished ones stay whatever their age: a
/// request is only ever examined again from its record while unfinished
/// (finished ones lie behind the contract's cursor), and an on-chain
/// request that waits long enough expires, which finishes its record.
pub(super) fn prune(txn: &WriteTransaction, cutoff: u64) -> Result<u64, StoreError> {
    let mut table = txn.open_table(REQUESTS)?;
    let old = collect(table.iter()?, |k, v| {
        let record: Record = decode("requests", hex::encode(k), v)?;
        Ok((record.stage.is_finished() && record.updated_at < cutoff).then(|| k.to_vec()))
    })?;
    let mut removed = 0;
    for k in old.into_iter().flatten() {
        table.remove(k.as_slice())?;
        removed += 1;
    }
    Ok(removed)
}

/// The next retry after a transient failure: attempts count up from the
/// `previous` stage's, the wait doubles (from 20 s to at most an hour).
fn retry_after(previous: Option<&Stage>, error: String) -> Decision {
    let attempts = match previous {
        Some(Stage::Retry { attempts, .. }) => attempts + 1,
        _ => 1,
    };
    let wait = 10u64.saturating_mul(1 << attempts.min(9)).min(3600);
    Decision::Retry {
        attempts,
        next_at: now() + wait,
        last_error: error,
    }
}

/// A silent rejection: audited, never answered, never retried.
fn reject(
    txn: &WriteTransaction,
    contract: Address,
    id: u64,
    reason: String,
) -> Result<Decision, StoreError> {
    audit::record(
        txn,
        Event::Rejected {
            contract: contract.to_string(),
            request_id: id,
            reason: reason.clone(),
        },
    )?;
    super::expiries::owe(txn, contract, id)?;
    Ok(Decision::Rejected(reason))
}

/// How many of a contract's requests the daemon has recorded, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Every request recorded (each examined request is).
    pub seen: u64,
    pub answered: u64,
    pub rejected: u64,
    pub skipped: u64,
    /// Allocated but not answered yet, or waiting for a retry.
    pub pending: u64,
}

impl Store {
    pub fn request(&self, contract: Address, id: u64) -> Result<Option<Record>, StoreError> {
        self.read(|txn| get(txn, contract, id))
    }

    /// `contract`'s requests counted by stage (reads each of its records):
    /// those within the retention, as finished ones older are pruned.
    pub fn request_counts(&self, contract: Address) -> Result<RequestCounts, StoreError> {
        self.read(|txn| {
            let table = txn.table(REQUESTS)?;
            let (from, to) = (key(contract, 0), key(contract, u64::MAX));
            let stages = collect(table.range(from.as_slice()..=to.as_slice())?, |k, v| {
                decode::<Record>("requests", hex::encode(k), v).map(|r| r.stage)
            })?;
            let mut counts = RequestCounts::default();
            for stage in stages {
                counts.seen += 1;
                *match stage {
                    Stage::Answered { .. } => &mut counts.answered,
                    Stage::Rejected { .. } => &mut counts.rejected,
                    Stage::Skipped { .. } => &mut counts.skipped,
                    Stage::Allocated { .. } | Stage::Sent { .. } | Stage::Retry { .. } => {
                        &mut counts.pending
                    }
                } += 1;
            }
            Ok(counts)
        })
    }

    /// Every request not finished yet, in (contract, id) order.
    pub fn unfinished(&self) -> Result<Vec<Record>, StoreError> {
        self.read(|txn| {
            let requests = txn.table(REQUESTS)?;
            let unfinished = txn.table(UNFINISHED)?;
            let records = collect(unfinished.iter()?, |k, ()| {
                let record = requests.get(k)?;
                record
                    .map(|v| decode("requests", hex::encode(k), v.value()))
                    .transpose()
            })?;
            Ok(records.into_iter().flatten().collect())
        })
    }

    /// Records the decision on request `id` of `contract` from `verdict`
    /// (moving the contract's cursor past it when `advance_cursor`): a valid
    /// request gets its NFT's prefix under its new key, or the lowest free
    /// one; a key held by another allocation rejects it; a full pool defers
    /// it. A finished request is left as it is.
    pub fn decide(
        &self,
        contract: Address,
        id: u64,
        verdict: Verdict,
        advance_cursor: bool,
    ) -> Result<Decision, StoreError> {
        self.transition(|txn| self.decide_in(txn, contract, id, verdict, advance_cursor))
    }

    /// Requests of `contract` read at block `read_at` and judged
    /// (`verdicts`, in id order), each watched for reorgs ([`Store::watch`])
    /// and decided as by [`Store::decide`], all in one transaction: a poll's
    /// burst costs one commit, and a crash leaves all of them decided or
    /// none.
    pub fn decide_all(
        &self,
        contract: Address,
        read_at: u64,
        verdicts: Vec<(u64, Verdict)>,
        advance_cursor: bool,
    ) -> Result<Vec<(u64, Decision)>, StoreError> {
        self.transition(|txn| {
            let mut decisions = Vec::with_capacity(verdicts.len());
            for (id, verdict) in verdicts {
                reorgs::watch(txn, contract, id, read_at)?;
                let decision = self.decide_in(txn, contract, id, verdict, advance_cursor)?;
                decisions.push((id, decision));
            }
            Ok(decisions)
        })
    }

    fn decide_in(
        &self,
        txn: &WriteTransaction,
        contract: Address,
        id: u64,
        verdict: Verdict,
        advance_cursor: bool,
    ) -> Result<Decision, StoreError> {
        if advance_cursor {
            cursors::set_next_request(txn, contract, id + 1)?;
        }
        let previous = get(txn, contract, id)?.map(|r| r.stage);
        if previous.as_ref().is_some_and(Stage::is_finished) {
            return Ok(Decision::AlreadyFinished);
        }
        let decision = match verdict {
            Verdict::Unknown(error) => retry_after(previous.as_ref(), bounded(error)),
            Verdict::Skip(reason) => Decision::Skipped(bounded(reason)),
            Verdict::Reject(reason) => reject(txn, contract, id, bounded(reason))?,
            Verdict::Valid {
                nft,
                wg_key,
                server_pubkey,
            } => match allocations::allocate(
                txn,
                &self.pool,
                self.max_allocations,
                contract,
                id,
                nft,
                wg_key,
            )? {
                Allocate::New(allocation) => Decision::Granted(Grant {
                    allocation,
                    old_wg_key: None,
                    server_pubkey,
                }),
                Allocate::Rotated {
                    allocation,
                    old_wg_key,
                } => Decision::Granted(Grant {
                    allocation,
                    old_wg_key: Some(old_wg_key),
                    server_pubkey,
                }),
                Allocate::KeyInUse => {
                    let reason = "its WireGuard key belongs to another allocation".into();
                    reject(txn, contract, id, reason)?
                }
                // Always at the first attempt's wait, whatever came
                // before: any release can free a prefix.
                Allocate::PoolFull => retry_after(None, "no prefix free".into()),
            },
        };
        if let Some(stage) = decision.stage() {
            set(txn, contract, id, stage)?;
        }
        Ok(decision)
    }

    /// The answer to request `id` is on chain: sent in `transaction`, or
    /// found there (None). Its allocation now waits `handshake_timeout`
    /// seconds for the tunnel to come up.
    pub fn answered(
        &self,
        contract: Address,
        id: u64,
        slot: u128,
        transaction: Option<TxHash>,
        handshake_timeout: u64,
    ) -> Result<(), StoreError> {
        self.transition(|txn| answered(txn, contract, id, slot, transaction, handshake_timeout))
    }

    /// Several answers on chain (each as by [`Store::answered`]: contract,
    /// id, slot, transaction), in one transaction.
    pub fn answered_all(
        &self,
        answers: &[(Address, u64, u128, TxHash)],
        handshake_timeout: u64,
    ) -> Result<(), StoreError> {
        self.transition(|txn| {
            for &(contract, id, slot, tx) in answers {
                answered(txn, contract, id, slot, Some(tx), handshake_timeout)?;
            }
            Ok(())
        })
    }

    /// Request `id`'s answer, for the prefix in `slot`, is signed as
    /// transaction `sent` (a replacement when the request was `Sent`
    /// already): recorded before it is broadcast.
    pub fn sent(
        &self,
        contract: Address,
        id: u64,
        slot: u128,
        server_pubkey: [u8; 65],
        sent: SentTx,
    ) -> Result<(), StoreError> {
        self.transition(|txn| {
            let stage = get(txn, contract, id)?.map(|r| r.stage);
            match stage {
                Some(Stage::Allocated { slot: s, .. } | Stage::Sent { slot: s, .. })
                    if s == slot => {}
                other => {
                    return Err(StoreError::Conflict(format!(
                        "request {id} of {contract}: an answer sent from stage {other:?}"
                    )));
                }
            }
            set(
                txn,
                contract,
                id,
                Stage::Sent {
                    slot,
                    server_pubkey,
                    tx: sent.tx,
                    nonce: sent.nonce,
                    max_fee_per_gas: sent.max_fee_per_gas,
                    max_priority_fee_per_gas: sent.max_priority_fee_per_gas,
                },
            )
        })
    }

    /// Request `id` turned out to need nothing more (its allocation changed
    /// before the answer).
    pub fn skip(&self, contract: Address, id: u64, reason: String) -> Result<(), StoreError> {
        self.transition(|txn| set(txn, contract, id, Stage::Skipped { reason }))
    }

    /// The chain refused request `id`'s answer (it expired or was superseded
    /// meanwhile): the request ends, skipped. The prefix in `slot` stays
    /// with its NFT, but goes back to the pool unless a tunnel comes up with
    /// the current key within `handshake_timeout` seconds.
    pub fn refused(
        &self,
        contract: Address,
        id: u64,
        slot: u128,
        reason: String,
        handshake_timeout: u64,
    ) -> Result<(), StoreError> {
        self.transition(|txn| {
            allocations::await_handshake(txn, slot, handshake_timeout, false)?;
            set(txn, contract, id, Stage::Skipped { reason })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{
        super::tests::{CONTRACT, nft, open},
        *,
    };

    pub fn valid(nft: Address, wg_key: [u8; 32]) -> Verdict {
        Verdict::Valid {
            nft,
            wg_key,
            server_pubkey: [4; 65],
        }
    }

    /// Decides request `id`, valid, of NFT `n` for WireGuard key
    /// `[key; 32]` (advancing the cursor): it must be granted.
    pub fn grant(store: &Store, id: u64, n: u8, key: u8) -> Grant {
        match store.decide(CONTRACT, id, valid(nft(n), [key; 32]), true) {
            Ok(Decision::Granted(grant)) => grant,
            other => panic!("request {id} not granted: {other:?}"),
        }
    }

    fn stage(store: &Store, id: u64) -> Stage {
        store.request(CONTRACT, id).unwrap().unwrap().stage
    }

    fn unfinished_ids(store: &Store) -> Vec<u64> {
        store.unfinished().unwrap().iter().map(|r| r.id).collect()
    }

    /// A reason quoting a submitter's input is kept to
    /// [`MAX_REASON_BYTES`], in the record and in the audit log alike.
    #[test]
    fn reasons_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let long = "é".repeat(100_000);
        let verdicts = [
            Verdict::Reject(long.clone()),
            Verdict::Skip(long.clone()),
            Verdict::Unknown(long.clone()),
        ];
        for (id, verdict) in (1..).zip(verdicts) {
            store.decide(CONTRACT, id, verdict, true).unwrap();
            let text = match stage(&store, id) {
                Stage::Rejected { reason } | Stage::Skipped { reason } => reason,
                Stage::Retry { last_error, .. } => last_error,
                other => panic!("{other:?}"),
            };
            assert!(text.len() <= MAX_REASON_BYTES, "{}", text.len());
            assert!(text.len() > MAX_REASON_BYTES - 8, "{}", text.len());
            assert!(text.starts_with("éé") && text.ends_with('…'));
        }
        let audit::Event::Rejected { reason, .. } = &store.audit_tail(1).unwrap()[0].event else {
            panic!("not a rejection");
        };
        assert!(reason.len() <= MAX_REASON_BYTES);
        // Short ones are kept as they are.
        store
            .decide(CONTRACT, 9, Verdict::Reject("bad".into()), true)
            .unwrap();
        assert_eq!(
            stage(&store, 9),
            Stage::Rejected {
                reason: "bad".into()
            }
        );
    }

    #[test]
    fn requests_are_counted_by_stage_per_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = grant(&store, 1, 1, 1).allocation;
        store.answered(CONTRACT, 1, a.slot, None, 120).unwrap();
        grant(&store, 2, 2, 2);
        let reject = Verdict::Reject("bad".into());
        store.decide(CONTRACT, 3, reject, true).unwrap();
        store
            .decide(CONTRACT, 4, Verdict::Skip("gone".into()), true)
            .unwrap();
        store
            .decide(CONTRACT, 5, Verdict::Unknown("rpc".into()), true)
            .unwrap();
        let other = Address::repeat_byte(0xc1);
        store
            .decide(other, 1, Verdict::Skip("gone".into()), true)
            .unwrap();
        let counts = store.request_counts(CONTRACT).unwrap();
        let want = RequestCounts {
            seen: 5,
            answered: 1,
            rejected: 1,
            skipped: 1,
            pending: 2,
        };
        assert_eq!(counts, want);
        assert_eq!(store.request_counts(other).unwrap().seen, 1);
        let none = store.request_counts(Address::repeat_byte(0xc2)).unwrap();
        assert_eq!(none, RequestCounts::default());
    }

    #[test]
    fn a_valid_request_is_granted_then_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let grant = grant(&store, 7, 1, 1);
        assert_eq!(
            grant.allocation.prefix.to_string(),
            "2001:db8:100::4/126",
            "slot 0 is the broker's"
        );
        assert_eq!(grant.old_wg_key, None);
        assert_eq!(grant.server_pubkey, [4; 65]);
        assert_eq!(
            stage(&store, 7),
            Stage::Allocated {
                slot: grant.allocation.slot,
                server_pubkey: [4; 65]
            }
        );
        assert_eq!(unfinished_ids(&store), [7]);
        assert_eq!(store.next_request(CONTRACT, 1).unwrap(), 8);
        assert_eq!(grant.allocation.answered_at, None);

        let tx = TxHash::repeat_byte(0xab);
        store
            .answered(CONTRACT, 7, grant.allocation.slot, Some(tx), 120)
            .unwrap();
        let slot = grant.allocation.slot;
        assert_eq!(
            stage(&store, 7),
            Stage::Answered {
                slot,
                transaction: tx.to_string()
            }
        );
        assert_eq!(unfinished_ids(&store), [] as [u64; 0]);
        let a = store.allocation(slot).unwrap().unwrap();
        let answered_at = a.answered_at.expect("answered");
        assert_eq!(a.handshake_deadline, Some(answered_at + 120));
        let events: Vec<Event> = store
            .audit_tail(10)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            events,
            [
                Event::Allocated {
                    contract: CONTRACT.to_string(),
                    request_id: 7,
                    nft: nft(1).to_string(),
                    prefix: "2001:db8:100::4/126".into(),
                },
                Event::Answered {
                    contract: CONTRACT.to_string(),
                    request_id: 7,
                    transaction: tx.to_string(),
                },
            ]
        );

        // Deciding it again (a retried poll) changes nothing.
        assert_eq!(
            store
                .decide(CONTRACT, 7, valid(nft(1), [9; 32]), false)
                .unwrap(),
            Decision::AlreadyFinished
        );
        assert_eq!(store.allocation(slot).unwrap().unwrap().wg_key, [1; 32]);
    }

    #[test]
    fn a_sent_answer_is_recorded_replaced_and_then_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let slot = grant(&store, 1, 1, 1).allocation.slot;
        let first = SentTx {
            tx: TxHash::repeat_byte(1),
            nonce: 7,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
        };
        store.sent(CONTRACT, 1, slot, [4; 65], first).unwrap();
        let replacement = SentTx {
            tx: TxHash::repeat_byte(2),
            max_fee_per_gas: 2_250_000_001,
            ..first
        };
        store.sent(CONTRACT, 1, slot, [4; 65], replacement).unwrap();
        assert_eq!(
            stage(&store, 1),
            Stage::Sent {
                slot,
                server_pubkey: [4; 65],
                tx: replacement.tx,
                nonce: 7,
                max_fee_per_gas: 2_250_000_001,
                max_priority_fee_per_gas: 1_000_000_000,
            }
        );
        // Unfinished (a restart follows it up), counted as pending, and it
        // survives a restart.
        drop(store);
        let store = open(&dir);
        assert_eq!(unfinished_ids(&store), [1]);
        assert_eq!(store.request_counts(CONTRACT).unwrap().pending, 1);
        // Another slot's answer cannot take the record over.
        let err = store.sent(CONTRACT, 1, slot + 1, [4; 65], first);
        assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
        store
            .answered(CONTRACT, 1, slot, Some(replacement.tx), 120)
            .unwrap();
        assert_eq!(unfinished_ids(&store), [] as [u64; 0]);
        // Nor can a finished request go back to Sent.
        let err = store.sent(CONTRACT, 1, slot, [4; 65], first);
        assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    }

    #[test]
    fn a_new_key_of_the_same_nft_rotates_and_keys_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let first = grant(&store, 1, 1, 1);
        store
            .answered(CONTRACT, 1, first.allocation.slot, None, 120)
            .unwrap();
        let second = grant(&store, 2, 1, 2);
        assert_eq!(second.old_wg_key, Some([1; 32]));
        let a = &second.allocation;
        assert_eq!(
            (a.slot, a.request_id, a.wg_key),
            (first.allocation.slot, 2, [2; 32])
        );
        assert_eq!(
            (a.answered_at, a.handshake_deadline),
            (None, None),
            "the new key's answer is still to come"
        );
        // Key 2 is held by NFT 1: another NFT cannot take it.
        let Decision::Rejected(reason) = store
            .decide(CONTRACT, 3, valid(nft(2), [2; 32]), true)
            .unwrap()
        else {
            panic!("a key in use is rejected")
        };
        assert!(reason.contains("WireGuard key"), "{reason}");
        // Key 1 is free again after the rotation.
        let third = grant(&store, 4, 2, 1);
        assert_ne!(third.allocation.slot, first.allocation.slot);
        assert_eq!(store.allocations().unwrap().len(), 2);
        assert_eq!(unfinished_ids(&store), [2, 4]);
        assert_eq!(store.next_request(CONTRACT, 1).unwrap(), 5);
    }

    #[test]
    fn skips_rejections_and_retries_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let decision = store.decide(CONTRACT, 1, Verdict::Skip("expired".into()), true);
        assert_eq!(decision.unwrap(), Decision::Skipped("expired".into()));
        store
            .decide(CONTRACT, 2, Verdict::Reject("bad payload".into()), true)
            .unwrap();
        assert_eq!(
            stage(&store, 2),
            Stage::Rejected {
                reason: "bad payload".into()
            }
        );
        let rejected = store.audit_tail(1).unwrap().remove(0).event;
        assert!(
            matches!(rejected, Event::Rejected { request_id: 2, .. }),
            "{rejected:?}"
        );

        // A retry counts its attempts and waits longer each time.
        let unknown = || Verdict::Unknown("chain unreachable".into());
        let Decision::Retry {
            attempts: 1,
            next_at: first,
            ..
        } = store.decide(CONTRACT, 3, unknown(), true).unwrap()
        else {
            panic!("a first retry")
        };
        let Decision::Retry {
            attempts: 2,
            next_at: second,
            last_error,
        } = store.decide(CONTRACT, 3, unknown(), false).unwrap()
        else {
            panic!("a second retry")
        };
        assert!(second >= first + 20, "{first} then {second}");
        assert_eq!(last_error, "chain unreachable");
        assert_eq!(unfinished_ids(&store), [3]);
        assert_eq!(
            store.next_request(CONTRACT, 1).unwrap(),
            4,
            "retries do not hold the cursor"
        );
        store
            .decide(CONTRACT, 3, Verdict::Skip("expired".into()), false)
            .unwrap();
        assert_eq!(unfinished_ids(&store), [] as [u64; 0]);
    }

    #[test]
    fn a_full_pool_defers_and_a_release_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut grants = Vec::new();
        for n in 1..=3 {
            grants.push(grant(&store, n.into(), n, n));
        }
        let full = store
            .decide(CONTRACT, 4, valid(nft(4), [4; 32]), true)
            .unwrap();
        let Decision::Retry { last_error, .. } = full else {
            panic!("{full:?}")
        };
        assert_eq!(last_error, "no prefix free");
        let freed = grants[1].allocation.slot;
        store.release(freed, "test", false).unwrap().unwrap();
        let grant = grant(&store, 4, 4, 4);
        assert_eq!(grant.allocation.slot, freed, "the lowest free prefix");
    }

    #[test]
    fn a_refused_answer_ends_the_request_and_starts_the_handshake_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let grant = grant(&store, 1, 1, 1);
        let slot = grant.allocation.slot;
        store
            .refused(CONTRACT, 1, slot, "expired meanwhile".into(), 60)
            .unwrap();
        assert_eq!(
            stage(&store, 1),
            Stage::Skipped {
                reason: "expired meanwhile".into()
            }
        );
        let a = store.allocation(slot).unwrap().unwrap();
        assert_eq!(a.answered_at, None, "never answered");
        assert!(
            a.handshake_deadline.is_some_and(|d| d >= now() + 59),
            "{a:?}"
        );

        store
            .skip(CONTRACT, 2, "its allocation changed".into())
            .unwrap();
        assert_eq!(
            stage(&store, 2),
            Stage::Skipped {
                reason: "its allocation changed".into()
            }
        );
        assert_eq!(unfinished_ids(&store), [] as [u64; 0]);
    }

    #[test]
    fn unfinished_requests_are_found_without_scanning_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for id in 1..=50 {
            store.skip(CONTRACT, id, "expired".into()).unwrap();
        }
        let grant = grant(&store, 51, 1, 1);
        store
            .decide(CONTRACT, 52, Verdict::Unknown("rpc".into()), true)
            .unwrap();
        assert_eq!(unfinished_ids(&store), [51, 52]);
        // They survive a restart.
        drop(store);
        let store = open(&dir);
        assert_eq!(unfinished_ids(&store), [51, 52]);
        assert_eq!(stage(&store, 51), Decision::Granted(grant).stage().unwrap());
    }

    #[test]
    fn records_written_before_typed_keys_still_read() {
        // An `allocated` record as earlier versions stored it.
        let json = format!(
            r#"{{"contract":"{CONTRACT:#x}","id":3,"stage":{{"stage":"allocated","slot":"1","server_pubkey":"{}"}},"updated_at":5}}"#,
            "04".repeat(65)
        );
        let record: Record = decode("requests", 3, json.as_bytes()).unwrap();
        assert_eq!(
            record.stage,
            Stage::Allocated {
                slot: 1,
                server_pubkey: [4; 65]
            }
        );
        // And are written the same way.
        let value = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap();
        assert_eq!(value(&encode(&record)), value(json.as_bytes()));
    }
}
