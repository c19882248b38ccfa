//! Durable storage for one ledger node: openraft 0.9's log storage ([`LogStore`], segment
//! files of our own, [`wal`]) and state machine ([`StateMachineStore`], on sled), plus read
//! access to the ledger ([`Ledger`]).
//!
//! Invariants (see ARCHITECTURE.md):
//! - This crate never opens a socket and knows nothing of gRPC or HTTP.
//! - The vote and every log append are fsync-durable before openraft is told they are done;
//!   the state machine is fsynced ([`durability::Durability::sync`]) before the log entries
//!   it applied are removed.
//! - Applying entries is deterministic and never changes or removes an event.

mod apply;
pub mod asn;
pub mod chain;
pub mod codec;
pub mod dedup;
mod deferred;
pub mod durability;
pub mod ledger;
pub mod log_store;
pub mod mark;
mod space;
pub mod state_machine;
pub mod types;
pub mod wal;

use std::path::Path;

pub use apply::COMMAND_EVENTS_MAX;
pub use apply::RUN_EXTEND_ENTRIES_MAX;
pub use apply::TIP_CACHE_BYTES_MAX;
pub use deferred::DEFERRED_BYTES_MAX;
pub use ledger::ActivityPage;
pub use ledger::ActivityQuery;
pub use ledger::Ledger;
pub use ledger::ProofFailure;
pub use ledger::TRUST_READ_ATTEMPTS_MAX;
pub use ledger::TrustInputs;
pub use log_store::APPEND_ENTRIES_BYTES_MAX;
pub use log_store::ForcedMembership;
pub use log_store::LogStore;
pub use state_machine::StateMachineStore;
pub use types::*;

/// sled's page cache, in bytes. Its real memory use is a few times this.
pub const SLED_CACHE_BYTES: u64 = 64 << 20;

/// sled's segment size, in bytes (fixed when the database is created). Values of a quarter of
/// this or more would go to never-fsynced blob files: see [`ENTRY_BYTES_MAX`].
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;

/// The largest encoded Raft entry or sled value we write, in bytes: well under the blob
/// threshold of `SLED_SEGMENT_BYTES / 4`.
pub const ENTRY_BYTES_MAX: usize = 1536 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// How long `open` waits for sled's lock on its directory, in milliseconds. sled releases it
/// asynchronously after the last handle is dropped (its own tests block on it for that
/// reason), so a store reopened at once in the same process may briefly find it held.
pub const SLED_LOCK_WAIT_MS: u64 = 2_000;

/// Opens sled with our settings, waiting up to `SLED_LOCK_WAIT_MS` for its directory lock.
pub fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(SLED_CACHE_BYTES)
            // Our own fsync makes writes durable; sled's timer flush only adds background I/O.
            .flush_every_ms(None)
            // Values (a Raft entry holds a whole group-committed batch) must stay below sled's
            // blob threshold of segment_size / 4, because sled never fsyncs blob files.
            .segment_size(SLED_SEGMENT_BYTES)
            .open();
        match opened {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && started.elapsed().as_millis() < u128::from(SLED_LOCK_WAIT_MS) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Opens (or creates) the store in `dir`: the Raft log in `dir/raft-log`, sled in `dir/sled`,
/// snapshots in `dir/snapshot`.
/// Fails with [`StoreError::Corrupt`] when what is on disk does not hold together.
///
/// sled 0.34 panics instead of returning an error on some damage (a truncated `db` file, a
/// flipped bit in a live page: "tried to serialize Uninitialized"). Such a panic is caught here
/// and reported as [`StoreError::Corrupt`], so the node refuses to start with one line that
/// says what is wrong instead of a backtrace.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let previous_hook = std::panic::take_hook();
    let message = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let captured = std::sync::Arc::clone(&message);
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let text = if let Some(text) = info.payload().downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = info.payload().downcast_ref::<String>() {
            text.clone()
        } else {
            "(no message)".to_owned()
        };
        if let Ok(mut slot) = captured.lock() {
            *slot = Some(format!("{text}{location}"));
        }
    }));
    let opened = std::panic::catch_unwind(|| open_unguarded(dir));
    std::panic::set_hook(previous_hook);
    match opened {
        Ok(Err(StoreError::Sled(error @ sled::Error::Corruption { .. }))) => {
            Err(StoreError::Corrupt(format!(
                "sled found corrupted data in {} ({error}); replace this node under a new id",
                dir.join("sled").display()
            )))
        }
        // A damaged `conf` file reads as a sled from before 0.29.
        Ok(Err(StoreError::Sled(error @ sled::Error::Unsupported(_)))) => {
            Err(StoreError::Corrupt(format!(
                "sled cannot read its files in {} ({error}): they are damaged or were written \
                 by another sled version; replace this node under a new id",
                dir.join("sled").display()
            )))
        }
        Ok(result) => result,
        Err(_) => {
            let detail = message
                .lock()
                .ok()
                .and_then(|mut slot| slot.take())
                .unwrap_or_else(|| "(no message)".to_owned());
            Err(StoreError::Corrupt(format!(
                "sled could not read its files in {} (it panicked: {detail}); the files are \
                 truncated or damaged: replace this node under a new id",
                dir.join("sled").display()
            )))
        }
    }
}

fn open_unguarded(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let sled_dir = dir.join("sled");
    std::fs::create_dir_all(&sled_dir)?;
    let db = open_sled(&sled_dir)?;
    let durability = durability::Durability::open(db.clone(), &sled_dir)?;
    // The state machine first: it refuses a store of another format before the log is read.
    let state_machine = StateMachineStore::open(&db, durability.clone(), dir)?;
    let applied = state_machine.ledger().last_applied()?;
    let log_store = LogStore::new(dir, durability, applied, state_machine.installed())?;
    Ok((log_store, state_machine))
}
