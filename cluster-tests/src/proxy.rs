//! `LinkProxy`: a test-controlled TCP proxy for one directed peer link.
//!
//! It listens on `127.0.0.1:0` and forwards every connection to one target address. A test can
//! cut the link (every open connection is closed and new ones are accepted then closed at once,
//! so the dialer sees a reset rather than a hang), blackhole it (connections stay open and new
//! ones are accepted, but every byte is dropped: the dialer sees silence and must time out),
//! heal it, and delay every forwarded chunk.
//! The controls are one `watch` channel, so they are thread-safe and cheap; dropping the proxy
//! drops the sender, which ends the accept loop and every connection task.
//!
//! Buffers are bounded: each direction of a connection copies through one
//! [`CHUNK_BYTES`] buffer and waits for the write before reading again, so a slow or delayed
//! link pushes back on the sender through TCP instead of queueing in memory.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes copied per read, per direction of a connection (the only buffer).
pub const CHUNK_BYTES: usize = 16 * 1024;
/// How long the proxy waits to connect to its target before it drops the incoming connection.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LinkState {
    /// The link refuses traffic.
    cut: bool,
    /// Incremented by every `cut()`: a connection opened before a cut closes even if the link
    /// was healed before its task looked.
    cuts: u64,
    /// Added before each forwarded chunk.
    delay: Duration,
    /// Bytes are read and dropped; connections stay open.
    blackhole: bool,
}

/// A TCP proxy on one directed link; see the module documentation.
pub struct LinkProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<LinkState>,
    accept: JoinHandle<()>,
}

impl LinkProxy {
    /// Binds `127.0.0.1:0` and forwards every accepted connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a proxy on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (state, receiver) = watch::channel(LinkState::default());
        let accept = tokio::spawn(accept_loop(listener, target, receiver));
        Ok(LinkProxy {
            addr,
            target,
            state,
            accept,
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Closes every open connection and refuses new ones (accept, then close) until `heal`.
    pub fn cut(&self) {
        self.state.send_modify(|state| {
            state.cut = true;
            state.cuts += 1;
        });
    }

    /// Keeps every connection open and accepts new ones, but drops every byte (silent loss)
    /// until `heal`.
    pub fn blackhole(&self) {
        self.state.send_modify(|state| state.blackhole = true);
    }

    /// Lets connections through again. Connections that lost bytes in a blackhole are closed
    /// (their streams are broken); new ones work.
    pub fn heal(&self) {
        self.state.send_modify(|state| {
            state.cut = false;
            if state.blackhole {
                state.blackhole = false;
                state.cuts += 1;
            }
        });
    }

    /// True while the link is cut or blackholed.
    pub fn is_cut(&self) -> bool {
        let state = self.state.borrow();
        state.cut || state.blackhole
    }

    /// Delays every forwarded chunk by `delay` (`Duration::ZERO` removes the delay).
    pub fn set_delay(&self, delay: Duration) {
        self.state.send_modify(|state| state.delay = delay);
    }

    /// The current per-chunk delay.
    pub fn delay(&self) -> Duration {
        self.state.borrow().delay
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        // Connection tasks end when the sender (dropped with `self`) is gone.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let Ok((inbound, _)) = accepted else {
            // Out of descriptors or a transient error: back off a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let current = *state.borrow_and_update();
        if current.cut {
            drop(inbound);
            continue;
        }
        if current.blackhole {
            tokio::spawn(swallow(inbound, state.clone(), current.cuts));
            continue;
        }
        tokio::spawn(serve(inbound, target, state.clone(), current.cuts));
    }
}

/// Forwards one connection until either side closes or the link is cut.
async fn serve(
    inbound: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    cuts_at_open: u64,
) {
    let connect = tokio::time::timeout(
        Duration::from_millis(CONNECT_TIMEOUT_MS),
        TcpStream::connect(target),
    );
    let outbound = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(stream)) => stream,
            _ => return,
        },
        () = until_cut(&mut state, cuts_at_open) => return,
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    let up = pump(inbound_read, outbound_write, state.clone());
    let down = pump(outbound_read, inbound_write, state.clone());
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = until_cut(&mut state, cuts_at_open) => {}
    }
    // Dropping the halves closes both sockets.
}

/// Holds a connection accepted while the link is blackholed: reads and drops its bytes until
/// the link is healed or cut (then closes it).
async fn swallow(mut inbound: TcpStream, mut state: watch::Receiver<LinkState>, cuts: u64) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let drain = async {
        while let Ok(read) = inbound.read(&mut buffer).await {
            if read == 0 {
                return;
            }
        }
    };
    tokio::select! {
        () = drain => {}
        () = until_cut(&mut state, cuts) => {}
    }
}

/// Returns once the link has been cut since the connection opened (or the proxy is gone).
async fn until_cut(state: &mut watch::Receiver<LinkState>, cuts_at_open: u64) {
    loop {
        let current = *state.borrow_and_update();
        if current.cut || current.cuts != cuts_at_open {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Copies one direction, chunk by chunk, with the link's current delay before each write.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    state: watch::Receiver<LinkState>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let LinkState {
            delay, blackhole, ..
        } = *state.borrow();
        if blackhole {
            continue;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buffer[..read]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> Result<(SocketAddr, JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok((addr, task))
    }

    async fn round_trip(stream: &mut TcpStream) -> Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buffer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buffer)).await??;
        Ok(buffer.to_vec())
    }

    #[tokio::test]
    async fn forwards_cuts_heals_and_delays() -> Result<()> {
        let (target, _server) = echo_server().await?;
        let proxy = LinkProxy::start(target).await?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut stream).await?, b"ping");

        proxy.cut();
        // The open connection is closed: a read sees EOF or an error.
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await?;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "open connection survived the cut"
        );
        // A new connection is accepted and closed at once.
        let mut refused = TcpStream::connect(proxy.addr()).await?;
        assert!(round_trip(&mut refused).await.is_err());

        proxy.heal();
        let mut healed = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut healed).await?, b"ping");

        proxy.set_delay(Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut healed).await?, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(200));
        Ok(())
    }

    #[tokio::test]
    async fn a_blackhole_drops_bytes_silently_and_heals() -> Result<()> {
        let (target, _server) = echo_server().await?;
        let proxy = LinkProxy::start(target).await?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut stream).await?, b"ping");
        proxy.blackhole();
        // Neither an answer nor a close: the read times out.
        stream.write_all(b"ping").await?;
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
        assert!(read.is_err(), "a blackholed link answered: {read:?}");
        // New connections are accepted and swallowed too.
        let mut late = TcpStream::connect(proxy.addr()).await?;
        late.write_all(b"ping").await?;
        let read = tokio::time::timeout(Duration::from_millis(300), late.read(&mut buffer)).await;
        assert!(read.is_err(), "a blackholed link answered: {read:?}");
        proxy.heal();
        assert!(round_trip(&mut stream).await.is_err());
        let mut healed = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut healed).await?, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn cut_then_heal_still_closes_old_connections() -> Result<()> {
        let (target, _server) = echo_server().await?;
        let proxy = LinkProxy::start(target).await?;
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        assert_eq!(round_trip(&mut stream).await?, b"ping");
        proxy.cut();
        proxy.heal();
        assert!(round_trip(&mut stream).await.is_err());
        Ok(())
    }
}
