//! What one peer call costs in CPU: a unary AppendEntries against the same call on a pipe
//! (`node::pipe`), each a request of `--bytes` (default 5,000: an entry of about a dozen
//! reports) answered by a 64-byte reply, one call at a time.
//!
//! `cargo run --release -p node --example peer_call_cost [-- CALLS [BYTES]]`
//!
//! The server runs in a child process (this example again, with `serve`) on one async worker, as
//! a ledgerd node on a 2-core machine; the client runs here on one worker. CPU is user+system
//! time from /proc, per call, of each side.

use std::time::Duration;
use std::time::Instant;

use node::pipe::Pipe;
use proto::RaftRequest;
use proto::peer_client::PeerClient;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of stat(5), 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        runtime().block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            println!("{}", listener.local_addr().expect("local address"));
            node::pipe::echo::serve(listener, true)
                .await
                .expect("serve");
        });
        return;
    }
    let calls: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let bytes: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5_000);

    let mut server = std::process::Command::new(std::env::current_exe().expect("this example"))
        .arg("serve")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut addr = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("its stdout")),
        &mut addr,
    )
    .expect("the server's address");
    let server_pid = server.id();
    let client_pid = std::process::id();

    runtime().block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addr.trim()))
            .expect("address")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        let data = vec![7u8; bytes];
        let timeout = Duration::from_secs(10);
        println!("{calls} calls of {bytes} bytes, one at a time");
        for round in 0..2 {
            for pipe in [false, true] {
                let (server_before, client_before) = (cpu_seconds(server_pid), cpu_seconds(client_pid));
                let started = Instant::now();
                if pipe {
                    let mut client = PeerClient::new(channel.clone());
                    let pipe = Pipe::open(move |requests| async move {
                        client.append_entries_stream(requests).await
                    });
                    for _ in 0..calls {
                        let request = RaftRequest { data: data.clone(), call_id: 0 };
                        pipe.call(request, timeout).await.expect("a reply");
                    }
                } else {
                    let mut client = PeerClient::new(channel.clone());
                    for _ in 0..calls {
                        let mut request = tonic::Request::new(RaftRequest { data: data.clone(), call_id: 0 });
                        // What ledgerd sends with every unary call.
                        let metadata = request.metadata_mut();
                        metadata.insert(proto::CLUSTER_ID_HEADER, "0123456789abcdef0123456789abcdef".parse().expect("ascii"));
                        metadata.insert(proto::TARGET_NODE_HEADER, "2".parse().expect("ascii"));
                        request.set_timeout(timeout);
                        client.append_entries(request).await.expect("a reply");
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                let server_us = (cpu_seconds(server_pid) - server_before) * 1e6 / f64::from(calls);
                let client_us = (cpu_seconds(client_pid) - client_before) * 1e6 / f64::from(calls);
                println!(
                    "round {round} {:5}: {:6.0} calls/s  CPU per call: server {server_us:5.1} µs, client {client_us:5.1} µs, both {:5.1} µs",
                    if pipe { "pipe" } else { "unary" },
                    f64::from(calls) / seconds,
                    server_us + client_us,
                );
            }
        }
    });
    let _ = server.kill();
    let _ = server.wait();
}
