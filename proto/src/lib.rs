//! Generated gRPC types and the `Peer` service between ledgerd nodes.
//!
//! Invariant: nothing here knows openraft or the ledger; openraft messages are opaque postcard
//! bytes. Conversions live in `node::network` and `node::peer_server`.

#![allow(clippy::all)]

tonic::include_proto!("ledger.v1");

/// gRPC metadata key carrying the sender's cluster id.
pub const CLUSTER_ID_HEADER: &str = "x-cluster-id";
/// gRPC metadata key carrying the node id the sender means to reach.
pub const TARGET_NODE_HEADER: &str = "x-target-node-id";
