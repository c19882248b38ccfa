//! [`Pipe`]: many calls of one kind to one peer over one long-lived gRPC stream.
//!
//! A unary gRPC call opens an HTTP/2 stream of its own: request headers, response headers and
//! trailers, and tonic's per-call machinery on both sides. A message on a stream that is already
//! open costs none of that: on this machine kind a 5 KB request answered by a small reply costs
//! about 125 µs of CPU (both sides together) as a unary call, and about 65 µs as a pair of
//! messages on an open stream (docs/PERFORMANCE.md). AppendEntries and forwarded batches are the
//! peer calls made for every Raft entry, about a thousand a second under load, so they travel on
//! pipes ([`crate::network`], [`crate::writer`]).
//!
//! Each request carries a `call_id` that its reply repeats; one task per pipe reads the replies
//! and hands each to its caller, so replies may come in any order.
//!
//! Invariants:
//! - A caller waits at most its timeout. A call that times out closes the pipe: a peer that
//!   does not answer may sit behind a connection that still looks open (a partition that drops
//!   packets), and a stream on it would swallow every later call too.
//! - Once closed (the stream failed or ended, a call timed out, or the pipe was dropped), a pipe
//!   takes no call, and every call waiting on it fails at once with the reason. The owner opens
//!   a new pipe for the next call; each call is one attempt, as a unary call would be.
//! - A peer that does not know the stream method (an older build, during a rolling upgrade)
//!   answers `UNIMPLEMENTED`: its calls fail with [`CallError::Unsupported`], and the owner makes
//!   them as unary calls from then on.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// A message that carries the number of the call it belongs to.
pub trait Tagged {
    fn call_id(&self) -> u64;
    fn set_call_id(&mut self, id: u64);
}

macro_rules! tagged {
    ($($message:ty),*) => {$(
        impl Tagged for $message {
            fn call_id(&self) -> u64 {
                self.call_id
            }
            fn set_call_id(&mut self, id: u64) {
                self.call_id = id;
            }
        }
    )*};
}

tagged!(
    proto::RaftRequest,
    proto::RaftReply,
    proto::ForwardWriteRequest,
    proto::ForwardWriteReply
);

/// Why a call on a pipe got no reply.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The peer does not serve this stream: make the call as a unary call.
    Unsupported,
    /// The stream failed, ended or timed out; the peer may or may not have received the call.
    Failed(tonic::Status),
}

/// What a caller waits for.
type Answer<Reply> = oneshot::Sender<Result<Reply, CallError>>;

struct State<Reply> {
    waiting: HashMap<u64, Answer<Reply>>,
    /// Set once, when the pipe closes.
    closed: Option<CallError>,
}

impl<Reply> State<Reply> {
    /// Closes the pipe (if still open) and fails every waiting call with `why`.
    fn close(&mut self, why: CallError) {
        if self.closed.is_some() {
            return;
        }
        for (_, answer) in self.waiting.drain() {
            let _ = answer.send(Err(why.clone()));
        }
        self.closed = Some(why);
    }
}

type Shared<Reply> = Mutex<State<Reply>>;

fn lock<Reply>(shared: &Shared<Reply>) -> std::sync::MutexGuard<'_, State<Reply>> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One open stream of calls to one peer. See the module documentation.
pub struct Pipe<Request, Reply> {
    requests: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared<Reply>>,
    next_id: AtomicU64,
    reader: tokio::task::AbortHandle,
}

impl<Request, Reply> Pipe<Request, Reply>
where
    Request: Tagged + Send + 'static,
    Reply: Tagged + Send + 'static,
{
    /// Opens a pipe: `open` is given the stream of requests and starts the gRPC call (it runs in
    /// the pipe's reader task, so calls may be queued before the peer has answered the open).
    /// Must be called within a tokio runtime.
    pub fn open<Open, Opened>(open: Open) -> Self
    where
        Open: FnOnce(UnboundedReceiverStream<Request>) -> Opened,
        Opened: Future<Output = Result<tonic::Response<tonic::Streaming<Reply>>, tonic::Status>>
            + Send
            + 'static,
    {
        let (requests, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Mutex::new(State {
            waiting: HashMap::new(),
            closed: None,
        }));
        let opened = open(UnboundedReceiverStream::new(receiver));
        let reader = tokio::spawn(read(opened, Arc::clone(&shared))).abort_handle();
        Self {
            requests,
            shared,
            next_id: AtomicU64::new(1),
            reader,
        }
    }

    /// Whether the pipe still takes calls.
    pub fn is_open(&self) -> bool {
        lock(&self.shared).closed.is_none()
    }

    /// Sends `request` and waits for its reply, at most `timeout`.
    pub async fn call(&self, mut request: Request, timeout: Duration) -> Result<Reply, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.set_call_id(id);
        let (answer, reply) = oneshot::channel();
        {
            let mut state = lock(&self.shared);
            if let Some(why) = &state.closed {
                return Err(why.clone());
            }
            state.waiting.insert(id, answer);
        }
        if self.requests.send(request).is_err() {
            self.close(tonic::Status::unavailable("the peer stream is closed"));
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_dropped)) => Err(CallError::Failed(tonic::Status::unavailable(
                "the peer stream closed",
            ))),
            Err(_elapsed) => {
                let status = tonic::Status::deadline_exceeded(format!(
                    "no reply within {} ms on the peer stream",
                    timeout.as_millis()
                ));
                self.close(status.clone());
                Err(CallError::Failed(status))
            }
        }
    }

    fn close(&self, status: tonic::Status) {
        lock(&self.shared).close(CallError::Failed(status));
        self.reader.abort();
    }
}

impl<Request, Reply> Drop for Pipe<Request, Reply> {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader task: opens the stream, hands each reply to its caller, and closes the pipe when
/// the stream fails or ends.
async fn read<Reply: Tagged>(
    opened: impl Future<Output = Result<tonic::Response<tonic::Streaming<Reply>>, tonic::Status>>,
    shared: Arc<Shared<Reply>>,
) {
    let why = |status: tonic::Status| match status.code() {
        tonic::Code::Unimplemented => CallError::Unsupported,
        _ => CallError::Failed(status),
    };
    let mut replies = match opened.await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            lock(&shared).close(why(status));
            return;
        }
    };
    let ended = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let answer = lock(&shared).waiting.remove(&reply.call_id());
                // A reply nobody waits for answers a call that timed out: dropped.
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(reply));
                }
            }
            Ok(None) => {
                break CallError::Failed(tonic::Status::unavailable("the peer ended the stream"));
            }
            Err(status) => break why(status),
        }
    };
    tracing::debug!(?ended, "peer stream closed");
    lock(&shared).close(ended);
}

/// A peer for tests and for `examples/peer_call_cost.rs`, which measures what a call costs.
#[doc(hidden)]
pub mod echo {
    use std::pin::Pin;

    use futures::StreamExt;
    use proto::RaftReply;
    use proto::RaftRequest;
    use proto::peer_server::Peer;
    use proto::peer_server::PeerServer;
    use tonic::Request;
    use tonic::Response;
    use tonic::Status;

    /// A peer that answers AppendEntries, on its stream and as unary calls, with the request's
    /// data reversed (its last 64 bytes), holds stream requests whose data is `hold`
    /// unanswered, and fails the stream at a request whose data is `end`. With `streams` false
    /// it does not serve the stream, as an older build.
    pub struct Echo {
        pub streams: bool,
    }

    fn reversed(data: &[u8]) -> Vec<u8> {
        data.iter().rev().take(64).copied().collect()
    }

    type Replies = Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send>>;
    type ForwardReplies =
        Pin<Box<dyn futures::Stream<Item = Result<proto::ForwardWriteReply, Status>> + Send>>;

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    #[tonic::async_trait]
    impl Peer for Echo {
        type AppendEntriesStreamStream = Replies;
        type ForwardWriteStreamStream = ForwardReplies;

        async fn append_entries_stream(
            &self,
            request: Request<tonic::Streaming<RaftRequest>>,
        ) -> Result<Response<Replies>, Status> {
            if !self.streams {
                return unimplemented();
            }
            let replies = request.into_inner().filter_map(|request| async move {
                match request {
                    Ok(request) if request.data == b"hold" => None,
                    Ok(request) if request.data == b"end" => Some(Err(Status::aborted("ended"))),
                    Ok(request) => Some(Ok(RaftReply {
                        data: reversed(&request.data),
                        error: Vec::new(),
                        call_id: request.call_id,
                    })),
                    Err(status) => Some(Err(status)),
                }
            });
            Ok(Response::new(Box::pin(replies)))
        }
        async fn append_entries(
            &self,
            request: Request<RaftRequest>,
        ) -> Result<Response<RaftReply>, Status> {
            Ok(Response::new(RaftReply {
                data: reversed(&request.into_inner().data),
                ..Default::default()
            }))
        }
        async fn vote(&self, _: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
            unimplemented()
        }
        async fn install_snapshot(
            &self,
            _: Request<tonic::Streaming<proto::SnapshotChunk>>,
        ) -> Result<Response<RaftReply>, Status> {
            unimplemented()
        }
        async fn forward_write(
            &self,
            _: Request<proto::ForwardWriteRequest>,
        ) -> Result<Response<proto::ForwardWriteReply>, Status> {
            unimplemented()
        }
        async fn forward_write_stream(
            &self,
            _: Request<tonic::Streaming<proto::ForwardWriteRequest>>,
        ) -> Result<Response<ForwardReplies>, Status> {
            unimplemented()
        }
        async fn read_index(
            &self,
            _: Request<proto::ReadIndexRequest>,
        ) -> Result<Response<proto::ReadIndexReply>, Status> {
            unimplemented()
        }
        async fn join(
            &self,
            _: Request<proto::JoinRequest>,
        ) -> Result<Response<proto::JoinReply>, Status> {
            unimplemented()
        }
        async fn status(
            &self,
            _: Request<proto::StatusRequest>,
        ) -> Result<Response<proto::StatusReply>, Status> {
            unimplemented()
        }
        async fn change_membership(
            &self,
            _: Request<proto::MembershipRequest>,
        ) -> Result<Response<proto::MembershipReply>, Status> {
            unimplemented()
        }
        async fn campaign(
            &self,
            _: Request<proto::CampaignRequest>,
        ) -> Result<Response<proto::CampaignReply>, Status> {
            unimplemented()
        }
    }

    /// Serves [`Echo`] on `listener` (with `TCP_NODELAY`, as ledgerd's peer server).
    pub async fn serve(
        listener: tokio::net::TcpListener,
        streams: bool,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(PeerServer::new(Echo { streams }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proto::RaftReply;
    use proto::RaftRequest;
    use proto::peer_client::PeerClient;

    /// [`echo::Echo`] on a loopback port, and a client channel to it.
    async fn serve(streams: bool) -> tonic::transport::Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(echo::serve(listener, streams));
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("address")
            .connect_lazy()
    }

    fn pipe(channel: &tonic::transport::Channel) -> Pipe<RaftRequest, RaftReply> {
        let mut client = PeerClient::new(channel.clone());
        Pipe::open(move |requests| async move { client.append_entries_stream(requests).await })
    }

    fn request(data: &[u8]) -> RaftRequest {
        RaftRequest {
            data: data.to_vec(),
            call_id: 0,
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn concurrent_calls_each_get_their_own_reply() {
        let channel = serve(true).await;
        let pipe = pipe(&channel);
        let calls = (0..50u8).map(|i| {
            let pipe = &pipe;
            async move { (i, pipe.call(request(&[i, 1, 2]), WAIT).await) }
        });
        for (i, reply) in futures::future::join_all(calls).await {
            assert_eq!(reply.expect("a reply").data, vec![2, 1, i]);
        }
        assert!(pipe.is_open());
    }

    #[tokio::test]
    async fn a_call_that_times_out_closes_the_pipe_and_fails_the_others() {
        let channel = serve(true).await;
        let pipe = pipe(&channel);
        assert_eq!(
            pipe.call(request(b"ab"), WAIT).await.expect("a reply").data,
            b"ba"
        );
        let held = pipe.call(request(b"hold"), WAIT);
        let timed_out = pipe.call(request(b"hold"), Duration::from_millis(100));
        let (held, timed_out) = tokio::join!(held, timed_out);
        assert!(
            matches!(timed_out, Err(CallError::Failed(ref s)) if s.code() == tonic::Code::DeadlineExceeded),
            "{timed_out:?}"
        );
        // The other call fails with the same reason at once, not after its own 10 s.
        assert!(
            matches!(held, Err(CallError::Failed(ref s)) if s.code() == tonic::Code::DeadlineExceeded),
            "{held:?}"
        );
        assert!(!pipe.is_open());
        assert!(matches!(
            pipe.call(request(b"ab"), WAIT).await,
            Err(CallError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn a_stream_the_peer_fails_closes_the_pipe() {
        let channel = serve(true).await;
        let pipe = pipe(&channel);
        let failed = pipe.call(request(b"end"), WAIT).await;
        assert!(
            matches!(failed, Err(CallError::Failed(ref s)) if s.code() == tonic::Code::Aborted),
            "{failed:?}"
        );
        assert!(!pipe.is_open());
        // A new pipe on the same channel works.
        let pipe = self::pipe(&channel);
        assert_eq!(
            pipe.call(request(b"xy"), WAIT).await.expect("a reply").data,
            b"yx"
        );
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_is_unsupported() {
        let channel = serve(false).await;
        let pipe = pipe(&channel);
        let result = pipe.call(request(b"ab"), WAIT).await;
        assert!(matches!(result, Err(CallError::Unsupported)), "{result:?}");
    }

    #[tokio::test]
    async fn an_unreachable_peer_fails_the_call() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("address")
            .connect_lazy();
        let pipe = pipe(&channel);
        let result = pipe.call(request(b"ab"), WAIT).await;
        assert!(
            matches!(result, Err(CallError::Failed(ref s)) if s.code() == tonic::Code::Unavailable),
            "{result:?}"
        );
    }
}
