//! Goal: a snapshot stream that ends before the whole snapshot arrived is refused, and the
//! node that received it keeps running.
//!
//! Found by the soak (seed 20261211): the leader's replication to a node it had just added
//! closed while a snapshot was on its way; the dropped stream ended cleanly, the new node took
//! the part it had for the whole snapshot, could not decode it and stopped (openraft takes a
//! snapshot it cannot install for a storage error). The first chunk now announces the data's
//! length and SHA-256, and the receiver installs nothing else.
//!
//! Method: 3 nodes. Through node 2's real gRPC port, as a leader would (the current leader's
//! vote, a snapshot past the committed index), send (a) a stream that ends after 100 of the
//! 1000 bytes it announced, (b) 1000 bytes whose SHA-256 is not the announced one. Each must
//! be refused with `DATA_LOSS` naming what is wrong; node 2 must still run, and a report
//! through it must commit and be applied on every node.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Cluster, slow_test};
use serde_json::json;
use tonic::metadata::MetadataValue;

const RECEIVER: u64 = 2;
const ANNOUNCED_BYTES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_cut_short_is_refused_and_the_node_runs_on() {
    let Some(guard) = slow_test("t26_snapshot_stream_cut") else {
        return;
    };
    guard.run(scenario()).await;
}

async fn scenario() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let agent = api.fixture()?.agents[0].clone();
    api.report(1, &agent.asn, "task_completed", json!({ "step": "before" }))
        .await
        .context("report before")?;
    let status = api.node_status(RECEIVER).await.context("node status")?;
    let leader = status.leader_id.context("no leader known")?;
    let committed = status.committed_index.context("nothing committed")?;
    let cluster_id = status.cluster_id.context("no cluster id")?;

    // What a leader's first chunk carries: its vote and the meta of a snapshot ahead of the
    // receiver's log (so the receiver would install it).
    let vote = raft_store::Vote::new_committed(status.term, leader);
    let meta = raft_store::SnapshotMeta {
        last_log_id: Some(raft_store::LogId::new(
            openraft::CommittedLeaderId::new(status.term, leader),
            committed + 1000,
        )),
        last_membership: raft_store::StoredMembership::default(),
        snapshot_id: "t26-cut".into(),
    };
    let meta = raft_store::codec::encode(&(vote, meta));
    let data = vec![7u8; ANNOUNCED_BYTES];
    let sha256 = raft_store::chain::sha256(&data).to_vec();

    let cut = send(
        &cluster,
        &cluster_id,
        meta.clone(),
        &data[..100],
        ANNOUNCED_BYTES,
        sha256,
    )
    .await;
    expect_data_loss(
        "a stream cut after 100 bytes",
        cut,
        "ended after 100 of 1000 bytes",
    )?;
    let wrong_hash = send(
        &cluster,
        &cluster_id,
        meta,
        &data,
        ANNOUNCED_BYTES,
        vec![0; 32],
    )
    .await;
    expect_data_loss("1000 bytes of another hash", wrong_hash, "SHA-256")?;

    cluster.check_running(RECEIVER)?;
    let event = api
        .report(
            RECEIVER,
            &agent.asn,
            "task_completed",
            json!({ "step": "after" }),
        )
        .await
        .context("report through the receiver after the refused snapshots")?;
    api.wait_applied(&[1, 2, 3], Duration::from_secs(10))
        .await
        .with_context(|| format!("every node to apply seq {}", event.seq))?;
    cluster.check_running(RECEIVER)?;
    cluster.finish();
    Ok(())
}

/// Sends one `InstallSnapshot` stream to the receiver: a first chunk with `meta` and the
/// announced length and hash, then `data` in chunks of 64 bytes.
async fn send(
    cluster: &Cluster,
    cluster_id: &str,
    meta: Vec<u8>,
    data: &[u8],
    announced_bytes: usize,
    announced_sha256: Vec<u8>,
) -> Result<tonic::Response<proto::RaftReply>, tonic::Status> {
    let addr = cluster
        .grpc_addr(RECEIVER)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut client = proto::peer_client::PeerClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut chunks = vec![proto::SnapshotChunk {
        meta,
        data: Vec::new(),
        total_bytes: announced_bytes as u64,
        data_sha256: announced_sha256,
    }];
    chunks.extend(data.chunks(64).map(|piece| proto::SnapshotChunk {
        data: piece.to_vec(),
        ..Default::default()
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(chunks));
    let target = MetadataValue::try_from(RECEIVER.to_string())
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let cluster =
        MetadataValue::try_from(cluster_id).map_err(|e| tonic::Status::internal(e.to_string()))?;
    request
        .metadata_mut()
        .insert(proto::TARGET_NODE_HEADER, target);
    request
        .metadata_mut()
        .insert(proto::CLUSTER_ID_HEADER, cluster);
    client.install_snapshot(request).await
}

fn expect_data_loss(
    what: &str,
    got: Result<tonic::Response<proto::RaftReply>, tonic::Status>,
    needle: &str,
) -> Result<()> {
    match got {
        Ok(reply) => bail!(
            "{what}: accepted (reply data {} bytes, error {} bytes)",
            reply.get_ref().data.len(),
            reply.get_ref().error.len()
        ),
        Err(status) => {
            ensure!(
                status.code() == tonic::Code::DataLoss && status.message().contains(needle),
                "{what}: expected DATA_LOSS naming {needle:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            Ok(())
        }
    }
}
