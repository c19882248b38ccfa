//! openraft's storage conformance suite against the sled store.

use openraft::StorageError;
use openraft::testing::StoreBuilder;
use openraft::testing::Suite;
use raft_store::LogStore;
use raft_store::NodeId;
use raft_store::StateMachineStore;
use raft_store::TypeConfig;
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) =
            raft_store::open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

/// `Suite::test_all` builds its own runtime per case, so this is a plain `#[test]`.
#[test]
fn openraft_storage_suite() -> Result<(), Box<StorageError<NodeId>>> {
    Suite::test_all(SledBuilder).map_err(Box::new)
}
