//! `Cluster`: real `ledgerd` child processes with their data directories and ports.
//!
//! Every node keeps its id, data directory and ports for the life of the cluster, so a restart
//! brings back the same member. Children write stdout and stderr to `<data-dir>/ledgerd.log`;
//! when a test fails the tail of each log is printed. Clusters in one test binary run one at a
//! time (a process-wide lock held by each `Cluster`): the machines have 2 cores.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::api::{AddNodeResponse, Api, ApiError, Endpoint, Fixture, RemoveNodeResponse};
use crate::proxy::LinkProxy;
use crate::wait_for;

/// How long a node may take to become ready after it is spawned.
pub const READY_TIMEOUT_MS: u64 = 30_000;
/// How long a node may take to exit after SIGTERM.
pub const TERMINATE_TIMEOUT_MS: u64 = 10_000;
/// Lines of each node's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 60;
/// Agents in the pool every cluster gets once formed (see [`Fixture`]).
pub const FIXTURE_AGENTS_DEFAULT: usize = 8;
/// How long the fixture may take to create (retries while there is no leader).
pub const FIXTURE_TIMEOUT_MS: u64 = 30_000;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static PORTS_HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Node flags that tests tune.
#[derive(Clone, Debug)]
pub struct Options {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// `--snapshot-logs`; `None` keeps ledgerd's default.
    pub snapshot_logs: Option<u64>,
    /// `--snapshot-keep-logs`; `None` keeps ledgerd's default.
    pub snapshot_keep_logs: Option<u64>,
    /// Passed verbatim after the other flags.
    pub extra_args: Vec<String>,
    /// Agents created for the [`Fixture`] once the cluster is formed; 0 creates no fixture.
    pub fixture_agents: usize,
    /// Puts a [`LinkProxy`] on every directed peer link of the `n` nodes the cluster starts
    /// with (node i reaches node j through its own proxy, `--peer-route`), so tests can cut,
    /// heal and delay each link ([`Cluster::cut`], [`Cluster::isolate`], ...). Nodes added
    /// later (`spawn_new_node`) are reached directly, unless they are spares.
    pub proxied: bool,
    /// Ids `n+1 ..= n+spare_nodes` get their ports, data dir and (with `proxied`) link proxies
    /// when the cluster starts, so every node's `--peer-route`s already cover them:
    /// [`Cluster::spawn_new_node`] uses them first, and their links can be cut like any other.
    pub spare_nodes: u64,
    /// Puts a [`LinkProxy`] between the test's client and every node's HTTP address (nodes
    /// allocated at start, spares included), so a test can cut or blackhole the client's link
    /// to one node ([`Cluster::cut_client`]).
    pub proxied_clients: bool,
    /// Node id → a command prefix the node's `ledgerd` runs under: the binary and its flags
    /// follow it (e.g. `["strace", "-f", "-e", "inject=..."]` or `["env", "LD_PRELOAD=..."]`),
    /// on every spawn and restart of that node until
    /// [`Cluster::set_wrapper`] changes it. A wrapped node runs in its own process group, and
    /// the harness signals the whole group, so the wrapper and `ledgerd` stop together.
    pub wrappers: BTreeMap<u64, Vec<String>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heartbeat_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_logs: None,
            snapshot_keep_logs: None,
            extra_args: Vec::new(),
            fixture_agents: FIXTURE_AGENTS_DEFAULT,
            proxied: false,
            spare_nodes: 0,
            proxied_clients: false,
            wrappers: BTreeMap::new(),
        }
    }
}

impl Options {
    /// Options with a small snapshot policy (`--snapshot-logs N --snapshot-keep-logs K`).
    pub fn with_snapshots(snapshot_logs: u64, snapshot_keep_logs: u64) -> Options {
        Options {
            snapshot_logs: Some(snapshot_logs),
            snapshot_keep_logs: Some(snapshot_keep_logs),
            ..Options::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--heartbeat-ms".to_string(),
            self.heartbeat_ms.to_string(),
            "--election-timeout-min-ms".to_string(),
            self.election_timeout_min_ms.to_string(),
            "--election-timeout-max-ms".to_string(),
            self.election_timeout_max_ms.to_string(),
        ];
        if let Some(logs) = self.snapshot_logs {
            args.extend(["--snapshot-logs".to_string(), logs.to_string()]);
        }
        if let Some(keep) = self.snapshot_keep_logs {
            args.extend(["--snapshot-keep-logs".to_string(), keep.to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// The `ledgerd` binary: `$LEDGERD_BIN`, else `ledgerd` next to the directory of the running
/// executable (tests run from `target/<profile>/deps/`, the binary is `target/<profile>/ledgerd`).
pub fn ledgerd_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LEDGERD_BIN") {
        let path = PathBuf::from(path);
        ensure!(
            path.is_file(),
            "LEDGERD_BIN={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let exe_dir = exe
        .parent()
        .context("the running executable has no directory")?;
    let mut candidates = Vec::new();
    if let Some(profile_dir) = exe_dir.parent() {
        candidates.push(profile_dir.join("ledgerd"));
    }
    candidates.push(exe_dir.join("ledgerd"));
    for candidate in &candidates {
        if candidate.is_file() {
            ensure_fresh(candidate)?;
            return Ok(candidate.clone());
        }
    }
    bail!(
        "the ledgerd binary was not found (looked at {}). Build it first with \
         `cargo build -p node` (same profile and CARGO_TARGET_DIR as the tests), or set \
         LEDGERD_BIN=/path/to/ledgerd",
        candidates
            .iter()
            .map(|path| path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The `ledgerctl` binary next to `ledgerd` (`LEDGERCTL_BIN` overrides), refused when older
/// than its sources. `cargo test --workspace` builds it first, because `ledgerctl` has
/// integration tests; alone: `cargo build -p ledgerctl`.
pub fn ledgerctl_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("LEDGERCTL_BIN") {
        Some(path) => PathBuf::from(path),
        None => ledgerd_bin()?.with_file_name("ledgerctl"),
    };
    ensure!(
        path.is_file(),
        "{} is missing: run `cargo build -p ledgerctl` (same profile and CARGO_TARGET_DIR as the \
         tests), or set LEDGERCTL_BIN",
        path.display()
    );
    ensure_fresh_of(
        &path,
        &["ledgerctl", "verifier"],
        "cargo build -p ledgerctl",
    )?;
    Ok(path)
}

/// The newest modification time of the files under `dir`.
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(time);
    }
    newest
}

/// Refuses a `ledgerd` older than the sources it is built from: `cargo test -p cluster-tests`
/// alone does not rebuild it, and testing a stale binary proves nothing. (`cargo test
/// --workspace` builds it first, because `node` has integration tests.)
fn ensure_fresh(binary: &Path) -> Result<()> {
    ensure_fresh_of(
        binary,
        &["node", "api", "raft-store", "proto", "verifier"],
        "cargo build -p node",
    )
}

/// Refuses `binary` when a file under one of `crate_dirs` is newer.
fn ensure_fresh_of(binary: &Path, crate_dirs: &[&str], build: &str) -> Result<()> {
    let built = std::fs::metadata(binary)?.modified()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for crate_dir in crate_dirs {
        if let Some(changed) = newest_mtime(&workspace.join(crate_dir)) {
            ensure!(
                changed <= built,
                "{} is older than the sources in {crate_dir}/: run `{build}` first \
                 (or `cargo test --workspace`, which builds it)",
                binary.display()
            );
        }
    }
    Ok(())
}

/// Lowest port [`free_addr`] hands out.
const PORT_LOW: u16 = 10_000;

/// A free port on 127.0.0.1 for a node to listen on, below the kernel's ephemeral range (so no
/// outgoing connection can take it while its node is down between a kill and a restart): a
/// randomly placed probe, bound and released. Never hands out the same port twice in one
/// process.
pub fn free_addr() -> Result<SocketAddr> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let high = ephemeral_low.max(PORT_LOW + 1_000);
    let span = u64::from(high - PORT_LOW);
    let mut rng = crate::seed::Rng(
        u64::from(std::process::id()) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
    );
    for _ in 0..1_000 {
        let port = PORT_LOW + (rng.next_u64() % span) as u16;
        let mut handed_out = PORTS_HANDED_OUT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.contains(&port) {
            continue;
        }
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let addr = listener.local_addr()?;
        handed_out.insert(port);
        return Ok(addr);
    }
    bail!("no free port in {PORT_LOW}..{high} after 1000 attempts")
}

struct NodeProc {
    id: u64,
    data_dir: PathBuf,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    child: Option<Child>,
    paused: bool,
    /// The child leads its own process group (it was spawned under a wrapper).
    group: bool,
}

impl NodeProc {
    fn log_path(&self) -> PathBuf {
        self.data_dir.join("ledgerd.log")
    }
}

/// A set of `ledgerd` processes forming (at most) one cluster.
pub struct Cluster {
    api: Api,
    options: Options,
    bin: PathBuf,
    root: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeProc>,
    /// Allocated at start ([`Options::spare_nodes`]) but never spawned yet.
    spares: BTreeSet<u64>,
    /// `(from, to)` → the proxy `from` dials to reach `to` (only with `Options::proxied`).
    links: BTreeMap<(u64, u64), LinkProxy>,
    /// Node → the proxy the test's client reaches it through (only with
    /// `Options::proxied_clients`).
    client_links: BTreeMap<u64, LinkProxy>,
    /// Every fault action so far, with its time since the cluster started.
    faults: Mutex<Vec<String>>,
    started_at: Instant,
    finished: bool,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts an `n`-node cluster with the default options.
    pub async fn start(n: u64) -> Result<Cluster> {
        Cluster::start_with(n, Options::default()).await
    }

    /// Node 1 bootstraps; nodes 2..=n are spawned empty and added through the API on node 1.
    /// Once every node is ready and node 1 reports `n` voters, creates the [`Fixture`] (one
    /// operator, its `write` key, `options.fixture_agents` agents) through node 1 and waits
    /// until every node has applied it.
    pub async fn start_with(n: u64, options: Options) -> Result<Cluster> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let bin = ledgerd_bin()?;
        let serial = SERIAL.lock().await;
        let root = tempfile::Builder::new()
            .prefix("ledger-cluster-")
            .tempdir()
            .context("creating the cluster's temp dir")?;
        eprintln!(
            "cluster: {n} node(s) under {} using {}",
            root.path().display(),
            describe_binary(&bin)
        );
        let mut cluster = Cluster {
            api: Api::new()?,
            options,
            bin,
            root,
            nodes: BTreeMap::new(),
            spares: BTreeSet::new(),
            links: BTreeMap::new(),
            client_links: BTreeMap::new(),
            faults: Mutex::new(Vec::new()),
            started_at: Instant::now(),
            finished: false,
            _serial: serial,
        };
        let last_id = n + cluster.options.spare_nodes;
        for id in 1..=last_id {
            cluster.allocate(id)?;
        }
        cluster.spares = (n + 1..=last_id).collect();
        if cluster.options.proxied_clients {
            for id in 1..=last_id {
                let proxy = LinkProxy::start(cluster.http_addr(id)?).await?;
                cluster.api.set_endpoint(
                    id,
                    Endpoint {
                        http_addr: proxy.addr(),
                        alive: false,
                    },
                );
                cluster.client_links.insert(id, proxy);
            }
        }
        if cluster.options.proxied {
            for from in 1..=last_id {
                for to in (1..=last_id).filter(|to| *to != from) {
                    let proxy = LinkProxy::start(cluster.grpc_addr(to)?).await?;
                    cluster.links.insert((from, to), proxy);
                }
            }
            eprintln!(
                "cluster: {} link proxies: {}",
                cluster.links.len(),
                cluster
                    .links
                    .iter()
                    .map(|((from, to), proxy)| format!("{from}->{to} via {}", proxy.addr()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        cluster.spawn(1, true)?;
        cluster.wait_ready(1).await?;
        let key_path = cluster.data_dir(1)?.join("admin.key");
        let key = wait_for(
            Duration::from_millis(READY_TIMEOUT_MS),
            "node 1's admin.key",
            async || {
                let text = std::fs::read_to_string(&key_path)
                    .with_context(|| format!("reading {}", key_path.display()))?;
                let key = text.trim().to_string();
                ensure!(!key.is_empty(), "{} is empty", key_path.display());
                Ok(key)
            },
        )
        .await?;
        cluster.api.set_admin_key(key)?;
        for id in 2..=n {
            cluster.spawn(id, false)?;
        }
        for id in 2..=n {
            cluster.add_node(1, id).await?;
        }
        for id in 1..=n {
            cluster.wait_ready(id).await?;
        }
        let expected: Vec<u64> = (1..=n).collect();
        cluster.wait_voters(1, &expected).await?;
        if cluster.options.fixture_agents > 0 {
            let fixture = create_fixture(&cluster.api, cluster.options.fixture_agents).await?;
            cluster.api.set_fixture(fixture)?;
            cluster
                .api
                .wait_applied(&expected, Duration::from_millis(FIXTURE_TIMEOUT_MS))
                .await?;
        }
        Ok(cluster)
    }

    /// A clone of the cluster's API client (shares the node table).
    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// The admin API key.
    pub fn admin_key(&self) -> Result<String> {
        Ok(self.api.admin_key()?.to_string())
    }

    /// The cluster's temp dir.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Ids of all nodes the harness knows (running or not), spares not yet spawned excepted.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|id| !self.spares.contains(id))
            .collect()
    }

    /// Ids of the nodes whose process runs (paused ones included).
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.id)
            .collect()
    }

    /// Spare ids left for [`Cluster::spawn_new_node`] ([`Options::spare_nodes`]).
    pub fn spares_left(&self) -> usize {
        self.spares.len()
    }

    fn node(&self, id: u64) -> Result<&NodeProc> {
        self.nodes
            .get(&id)
            .with_context(|| format!("node {id} is unknown to the harness"))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut NodeProc> {
        self.nodes
            .get_mut(&id)
            .with_context(|| format!("node {id} is unknown to the harness"))
    }

    /// A node's data directory.
    pub fn data_dir(&self, id: u64) -> Result<PathBuf> {
        Ok(self.node(id)?.data_dir.clone())
    }

    /// A node's HTTP address.
    pub fn http_addr(&self, id: u64) -> Result<SocketAddr> {
        Ok(self.node(id)?.http_addr)
    }

    /// A node's gRPC address.
    pub fn grpc_addr(&self, id: u64) -> Result<SocketAddr> {
        Ok(self.node(id)?.grpc_addr)
    }

    /// A node's process id, when it runs.
    pub fn pid(&self, id: u64) -> Result<Option<u32>> {
        Ok(self.node(id)?.child.as_ref().map(Child::id))
    }

    /// Reserves ports and an (empty) data directory for node `id`.
    fn allocate(&mut self, id: u64) -> Result<()> {
        ensure!(!self.nodes.contains_key(&id), "node id {id} already used");
        let data_dir = self.root.path().join(format!("n{id}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let node = NodeProc {
            id,
            data_dir,
            http_addr: free_addr()?,
            grpc_addr: free_addr()?,
            child: None,
            paused: false,
            group: false,
        };
        self.api.set_endpoint(
            id,
            Endpoint {
                http_addr: node.http_addr,
                alive: false,
            },
        );
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Spawns node `id` with its fixed id, data dir and ports.
    fn spawn(&mut self, id: u64, bootstrap: bool) -> Result<()> {
        let bin = self.bin.clone();
        let option_args = self.options.args();
        let wrapper = self.options.wrappers.get(&id).cloned().unwrap_or_default();
        let routes: Vec<String> = self
            .links
            .iter()
            .filter(|((from, _), _)| *from == id)
            .flat_map(|(_, proxy)| {
                [
                    "--peer-route".to_string(),
                    format!("{}={}", proxy.target(), proxy.addr()),
                ]
            })
            .collect();
        let node = self.node_mut(id)?;
        ensure!(node.child.is_none(), "node {id} is already running");
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--data-dir".to_string(),
            node.data_dir.display().to_string(),
            "--http-addr".to_string(),
            node.http_addr.to_string(),
            "--grpc-addr".to_string(),
            node.grpc_addr.to_string(),
        ];
        if bootstrap {
            args.push("--bootstrap".to_string());
        }
        args.extend(option_args);
        args.extend(routes);
        let log_path = node.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let wrapper_text = if wrapper.is_empty() {
            String::new()
        } else {
            format!("{} ", wrapper.join(" "))
        };
        writeln!(
            log,
            "=== harness: starting node {id}: {wrapper_text}{} {}",
            bin.display(),
            args.join(" ")
        )?;
        let stderr = log.try_clone()?;
        let mut command = match wrapper.split_first() {
            None => Command::new(&bin),
            Some((program, prefix)) => {
                let mut command = Command::new(program);
                command.args(prefix).arg(&bin);
                // Its own process group, so signals reach the wrapper and ledgerd alike.
                command.process_group(0);
                command
            }
        };
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        remove_ledger_env(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {wrapper_text}{} for node {id}", bin.display()))?;
        node.child = Some(child);
        node.paused = false;
        node.group = !wrapper.is_empty();
        self.api.set_alive(id, true);
        Ok(())
    }

    /// Fails (with the log tail) if node `id` was started but its process has exited.
    pub fn check_running(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_mut() else {
            bail!("node {id} is not running (stopped by the test)");
        };
        if let Some(status) = child.try_wait()? {
            node.child = None;
            self.api.set_alive(id, false);
            bail!(
                "node {id} exited unexpectedly with {status}; log tail:\n{}",
                self.log_tail(id, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Waits until node `id` answers `/readyz` with 200; fails early if its process exits.
    pub async fn wait_ready(&mut self, id: u64) -> Result<()> {
        let api = self.api.clone();
        let started = Instant::now();
        loop {
            self.check_running(id)?;
            let last = match api.readyz(id).await {
                Ok(true) => return Ok(()),
                Ok(false) => "503 not ready".to_string(),
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= Duration::from_millis(READY_TIMEOUT_MS) {
                bail!(
                    "node {id} not ready after {READY_TIMEOUT_MS} ms (last: {last}); log tail:\n{}",
                    self.log_tail(id, LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(crate::POLL_INTERVAL_MS)).await;
        }
    }

    /// Waits until node `id` answers `/livez` (its HTTP server is up; it may not be a member).
    pub async fn wait_live(&mut self, id: u64) -> Result<()> {
        let url = format!("{}/livez", self.api.base_url(id)?);
        let started = Instant::now();
        loop {
            self.check_running(id)?;
            let last = match self.api.http().get(&url).send().await {
                Ok(response) if response.status() == 200 => return Ok(()),
                Ok(response) => format!("HTTP {}", response.status()),
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= Duration::from_millis(READY_TIMEOUT_MS) {
                bail!(
                    "node {id} not live after {READY_TIMEOUT_MS} ms (last: {last}); log tail:\n{}",
                    self.log_tail(id, LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(crate::POLL_INTERVAL_MS)).await;
        }
    }

    /// Waits until every running node is ready.
    pub async fn wait_all_ready(&mut self) -> Result<()> {
        let running: Vec<u64> = self
            .nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.id)
            .collect();
        for id in running {
            self.wait_ready(id).await?;
        }
        Ok(())
    }

    /// Waits until `GET /api/v1/cluster` on `via` shows exactly `expected` as voters and no
    /// learners.
    pub async fn wait_voters(&self, via: u64, expected: &[u64]) -> Result<()> {
        let expected: BTreeSet<u64> = expected.iter().copied().collect();
        let api = self.api.clone();
        wait_for(
            Duration::from_millis(READY_TIMEOUT_MS),
            &format!("voters {expected:?} on node {via}"),
            async || {
                let view = api.cluster(via).await?;
                let voters: BTreeSet<u64> = view.voters.iter().copied().collect();
                ensure!(
                    voters == expected && view.learners.is_empty(),
                    "voters {voters:?} learners {:?}",
                    view.learners
                );
                Ok(())
            },
        )
        .await
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        node.paused = false;
        let group = node.group;
        self.api.set_alive(id, false);
        if group {
            let _ = signal_group(child.id(), "KILL");
        }
        // `Child::kill` sends SIGKILL on unix; an already exited child is fine.
        let _ = child.kill();
        child.wait().with_context(|| format!("reaping node {id}"))?;
        append_log_marker(&self.node(id)?.log_path(), "=== harness: SIGKILL");
        Ok(())
    }

    /// SIGKILL every running node.
    pub fn kill_all(&mut self) -> Result<()> {
        let running: Vec<u64> = self
            .nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.id)
            .collect();
        for id in running {
            self.kill(id)?;
        }
        Ok(())
    }

    /// SIGTERM node `id` and wait for it to exit (SIGKILL and fail after
    /// [`TERMINATE_TIMEOUT_MS`]). Returns the exit status.
    pub async fn terminate(&mut self, id: u64) -> Result<ExitStatus> {
        let pid = self
            .pid(id)?
            .with_context(|| format!("node {id} is not running"))?;
        if self.node(id)?.paused {
            self.signal_node(id, pid, "CONT")?;
        }
        append_log_marker(&self.node(id)?.log_path(), "=== harness: SIGTERM");
        self.signal_node(id, pid, "TERM")?;
        self.api.set_alive(id, false);
        let started = Instant::now();
        loop {
            let node = self.node_mut(id)?;
            let child = node
                .child
                .as_mut()
                .with_context(|| format!("node {id} vanished"))?;
            if let Some(status) = child.try_wait()? {
                node.child = None;
                node.paused = false;
                return Ok(status);
            }
            if started.elapsed() >= Duration::from_millis(TERMINATE_TIMEOUT_MS) {
                self.kill(id)?;
                bail!("node {id} did not exit within {TERMINATE_TIMEOUT_MS} ms of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP node `id` (it keeps its sockets but answers nothing). Takes it out of routing.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        let pid = self
            .pid(id)?
            .with_context(|| format!("node {id} is not running"))?;
        self.signal_node(id, pid, "STOP")?;
        self.node_mut(id)?.paused = true;
        self.api.set_alive(id, false);
        Ok(())
    }

    /// SIGCONT node `id`. Puts it back into routing.
    pub fn resume(&mut self, id: u64) -> Result<()> {
        let pid = self
            .pid(id)?
            .with_context(|| format!("node {id} is not running"))?;
        self.signal_node(id, pid, "CONT")?;
        self.node_mut(id)?.paused = false;
        self.api.set_alive(id, true);
        Ok(())
    }

    /// Starts a stopped node again: same id, data dir and ports, without `--bootstrap`; under
    /// its wrapper, if it has one ([`Options::wrappers`]).
    pub fn restart(&mut self, id: u64) -> Result<()> {
        self.spawn(id, false)
    }

    /// Sets (`Some`) or removes (`None`) the wrapper of node `id` for its next spawn or
    /// restart; a running process keeps the one it was started with.
    pub fn set_wrapper(&mut self, id: u64, wrapper: Option<Vec<String>>) {
        match wrapper {
            Some(wrapper) if !wrapper.is_empty() => {
                self.options.wrappers.insert(id, wrapper);
            }
            _ => {
                self.options.wrappers.remove(&id);
            }
        }
    }

    /// Waits until node `id`'s process exits by itself (fails after `timeout`, leaving it
    /// running). Takes it out of routing and returns the exit status (of the wrapper, for a
    /// wrapped node; `strace` and `env` pass on the status of `ledgerd`).
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            let node = self.node_mut(id)?;
            let child = node
                .child
                .as_mut()
                .with_context(|| format!("node {id} is not running"))?;
            if let Some(status) = child.try_wait()? {
                let group = node.group;
                let pid = child.id();
                node.child = None;
                node.paused = false;
                if group {
                    // Anything the wrapper left behind in the group.
                    let _ = signal_group(pid, "KILL");
                }
                self.api.set_alive(id, false);
                append_log_marker(
                    &self.node(id)?.log_path(),
                    &format!("=== harness: exited by itself with {status}"),
                );
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                bail!(
                    "node {id} still runs {} ms after the wait began; log tail:\n{}",
                    timeout.as_millis(),
                    self.log_tail(id, LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal to node `id` (`pid`), or to its process group when it runs under a
    /// wrapper.
    fn signal_node(&self, id: u64, pid: u32, name: &str) -> Result<()> {
        if self.node(id)?.group {
            signal_group(pid, name)
        } else {
            signal(pid, name)
        }
    }

    /// Spawns a brand-new node (next unused id, empty data dir, fresh ports, no `--bootstrap`);
    /// it waits to be added. Returns its id.
    pub fn spawn_new_node(&mut self) -> Result<u64> {
        let id = match self.spares.pop_first() {
            Some(spare) => spare,
            None => {
                let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
                self.allocate(id)?;
                id
            }
        };
        self.spawn(id, false)?;
        // Clients are routed to it only once it is a member (`add_node`).
        self.api.set_alive(id, false);
        Ok(id)
    }

    /// Adds node `id` (already spawned) through `POST /api/v1/cluster/nodes` on `via`.
    pub async fn add_node(&mut self, via: u64, id: u64) -> Result<AddNodeResponse> {
        self.wait_live(id).await?;
        let (grpc_addr, http_addr) = (self.grpc_addr(id)?, self.http_addr(id)?);
        let added = self
            .api
            .add_node(via, id, grpc_addr, http_addr)
            .await
            .with_context(|| format!("adding node {id} through node {via}"))?;
        ensure!(added.id == id, "adding node {id} answered id {}", added.id);
        ensure!(
            added.voters.contains(&id),
            "node {id} is not a voter after it was added: {added:?}"
        );
        self.api.set_alive(id, true);
        Ok(added)
    }

    /// Removes node `id` through `DELETE /api/v1/cluster/nodes/{id}` on `via`. The process keeps
    /// running; the test decides what to do with it.
    pub async fn remove_node(&self, via: u64, id: u64) -> Result<RemoveNodeResponse> {
        let removed = self
            .api
            .remove_node(via, id)
            .await
            .with_context(|| format!("removing node {id} through node {via}"))?;
        ensure!(
            removed.removed == id,
            "removing node {id} answered removed {}",
            removed.removed
        );
        ensure!(
            !removed.voters.contains(&id) && !removed.learners.contains(&id),
            "node {id} is still a member after removal: {removed:?}"
        );
        Ok(removed)
    }

    fn link(&self, from: u64, to: u64) -> Result<&LinkProxy> {
        ensure!(
            !self.links.is_empty(),
            "the cluster has no link proxies (start it with Options::proxied)"
        );
        self.links
            .get(&(from, to))
            .with_context(|| format!("no proxied link {from}->{to}"))
    }

    /// Records and prints one fault action with its time since the cluster started.
    pub fn log_fault(&self, action: &str) {
        let line = format!(
            "[+{:>8.3} s] {action}",
            self.started_at.elapsed().as_secs_f64()
        );
        eprintln!("fault {line}");
        for node in self.nodes.values() {
            append_log_marker(&node.log_path(), &format!("=== harness fault {line}"));
        }
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(line);
    }

    /// The fault schedule so far (one line per action).
    pub fn fault_schedule(&self) -> Vec<String> {
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Cuts the directed link `from`->`to`: everything `from` sends to `to` (and the answers).
    pub fn cut(&self, from: u64, to: u64) -> Result<()> {
        self.link(from, to)?.cut();
        self.log_fault(&format!("cut {from}->{to}"));
        Ok(())
    }

    /// Heals the directed link `from`->`to`.
    pub fn heal(&self, from: u64, to: u64) -> Result<()> {
        self.link(from, to)?.heal();
        self.log_fault(&format!("heal {from}->{to}"));
        Ok(())
    }

    /// Delays every chunk on the directed link `from`->`to`.
    pub fn delay(&self, from: u64, to: u64, delay: Duration) -> Result<()> {
        self.link(from, to)?.set_delay(delay);
        self.log_fault(&format!("delay {from}->{to} {} ms", delay.as_millis()));
        Ok(())
    }

    /// Cuts every link from and to `id`.
    pub fn isolate(&self, id: u64) -> Result<()> {
        self.for_links_of(id, LinkProxy::cut)?;
        self.log_fault(&format!("isolate {id} (cut every link from and to it)"));
        Ok(())
    }

    fn for_links_of(&self, id: u64, action: impl Fn(&LinkProxy)) -> Result<()> {
        ensure!(!self.links.is_empty(), "the cluster has no link proxies");
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                action(proxy);
            }
        }
        Ok(())
    }

    /// Blackholes every link from and to `id`: connections stay open, bytes are dropped.
    pub fn isolate_silently(&self, id: u64) -> Result<()> {
        self.for_links_of(id, LinkProxy::blackhole)?;
        self.log_fault(&format!("blackhole every link from and to {id}"));
        Ok(())
    }

    /// Blackholes the directed link `from`->`to` (silent loss, no reset).
    pub fn blackhole(&self, from: u64, to: u64) -> Result<()> {
        self.link(from, to)?.blackhole();
        self.log_fault(&format!("blackhole {from}->{to}"));
        Ok(())
    }

    /// Cuts (`silent == false`: resets) or blackholes (`silent`) the client's link to node `id`.
    pub fn cut_client(&self, id: u64, silent: bool) -> Result<()> {
        let proxy = self
            .client_links
            .get(&id)
            .with_context(|| format!("no client proxy for node {id} (Options::proxied_clients)"))?;
        if silent {
            proxy.blackhole();
        } else {
            proxy.cut();
        }
        let how = if silent { "blackhole" } else { "cut" };
        self.log_fault(&format!("{how} the client's link to {id}"));
        Ok(())
    }

    /// Heals every link, the client links included.
    pub fn heal_all(&self) -> Result<()> {
        ensure!(
            !self.links.is_empty() || !self.client_links.is_empty(),
            "the cluster has no link proxies"
        );
        for proxy in self.links.values().chain(self.client_links.values()) {
            proxy.heal();
        }
        self.log_fault("heal all links");
        Ok(())
    }

    /// Delays every chunk on every link by `delay` (`Duration::ZERO` removes it).
    pub fn delay_all(&self, delay: Duration) -> Result<()> {
        ensure!(!self.links.is_empty(), "the cluster has no link proxies");
        for proxy in self.links.values() {
            proxy.set_delay(delay);
        }
        self.log_fault(&format!("delay all links {} ms", delay.as_millis()));
        Ok(())
    }

    /// The proxied directed links, `(from, to)`.
    pub fn links(&self) -> Vec<(u64, u64)> {
        self.links.keys().copied().collect()
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Ok(node) = self.node(id) else {
            return format!("(node {id} unknown)");
        };
        tail(&node.log_path(), lines)
    }

    /// Marks the test as passed: the logs are not printed when the cluster is dropped. Kills
    /// the children.
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Stops every node and moves the whole cluster directory out of the temp dir, so it
    /// survives the cluster. Returns the new location (a directory with `n1`, `n2`, ...).
    pub async fn stop_and_keep_data(mut self, destination: &Path) -> Result<PathBuf> {
        let running: Vec<u64> = self
            .nodes
            .values()
            .filter(|node| node.child.is_some())
            .map(|node| node.id)
            .collect();
        for id in running {
            self.terminate(id).await?;
        }
        std::fs::rename(self.root.path(), destination).with_context(|| {
            format!(
                "moving {} to {}",
                self.root.path().display(),
                destination.display()
            )
        })?;
        std::fs::create_dir_all(self.root.path())?;
        self.finished = true;
        Ok(destination.to_path_buf())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = !self.finished || std::thread::panicking();
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                if node.group {
                    let _ = signal_group(child.id(), "KILL");
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if failed {
            eprintln!(
                "cluster under {} ended without finish(): log tails follow",
                self.root.path().display()
            );
            let faults = self.fault_schedule();
            if !faults.is_empty() {
                eprintln!("fault schedule:\n{}", faults.join("\n"));
            }
            for node in self.nodes.values() {
                eprintln!(
                    "----- node {} ({}) last {LOG_TAIL_LINES} lines -----\n{}",
                    node.id,
                    node.log_path().display(),
                    tail(&node.log_path(), LOG_TAIL_LINES)
                );
            }
        }
        if std::env::var_os("LEDGER_KEEP_DATA").is_some() {
            self.root.disable_cleanup(true);
            eprintln!("kept {} (LEDGER_KEEP_DATA)", self.root.path().display());
        }
    }
}

/// Creates the fixture through node 1: operator `fixture`, its `write` key, `agents` agents.
async fn create_fixture(api: &Api, agents: usize) -> Result<Fixture> {
    let operator = retry_unavailable("creating the fixture operator", async || {
        api.create_operator(1, "fixture").await
    })
    .await?;
    let write_key = retry_unavailable("creating the fixture write key", async || {
        api.create_key(1, Some(&operator.id), "fixture-write", &["write"])
            .await
    })
    .await?;
    let admin = api.admin_key()?.to_string();
    let mut pool = Vec::with_capacity(agents);
    for n in 0..agents {
        let name = format!("fixture-agent-{n}");
        let agent = retry_unavailable(&format!("creating {name}"), async || {
            api.create_agent(1, &admin, &name, Some(&operator.id)).await
        })
        .await?;
        pool.push(agent);
    }
    Ok(Fixture {
        operator,
        write_key,
        agents: pool,
    })
}

/// Retries `attempt` while it fails without a definite answer (no answer, 5xx); a 4xx fails at
/// once, naming `what`.
pub(crate) async fn retry_unavailable<T, F>(what: &str, mut attempt: F) -> Result<T>
where
    F: AsyncFnMut() -> Result<T, ApiError>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_definite() => bail!("{what}: {error}"),
            Err(error) => {
                if started.elapsed() >= Duration::from_millis(FIXTURE_TIMEOUT_MS) {
                    bail!("{what}: still failing after {FIXTURE_TIMEOUT_MS} ms: {error}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(crate::POLL_INTERVAL_MS)).await;
    }
}

/// A `Command` for the ledgerd binary with no `LEDGER_*` variables inherited, for tests that
/// run ledgerd outside a `Cluster` (bad configurations).
pub fn ledgerd_command() -> Result<Command> {
    let mut command = Command::new(ledgerd_bin()?);
    remove_ledger_env(&mut command);
    Ok(command)
}

/// Sends a signal by name (`TERM`, `STOP`, `CONT`, `KILL`) with kill(1), which keeps this crate
/// free of `unsafe`.
pub(crate) fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill(1)")?;
    ensure!(status.success(), "kill -{name} {pid} failed: {status}");
    Ok(())
}

/// Sends a signal by name to the process group led by `pgid`.
pub(crate) fn signal_group(pgid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        // The group may be gone already (the node exited by itself).
        .stderr(Stdio::null())
        .status()
        .context("running kill(1)")?;
    ensure!(status.success(), "kill -{name} -- -{pgid} failed: {status}");
    Ok(())
}

/// Removes every `LEDGER_*` variable from a child's environment: ledgerd reads its flags from
/// them, and the developer's shell must not change what a test runs.
pub(crate) fn remove_ledger_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LEDGER_") {
            command.env_remove(key);
        }
    }
}

fn append_log_marker(path: &Path, marker: &str) {
    if let Ok(mut file) = OpenOptions::new().append(true).open(path) {
        let _ = writeln!(file, "{marker}");
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

fn describe_binary(bin: &Path) -> String {
    let modified = File::open(bin)
        .and_then(|file| file.metadata())
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|time| time.elapsed().ok())
        .map(|age| format!(" (built {} s ago)", age.as_secs()))
        .unwrap_or_default();
    format!("{}{modified}", bin.display())
}
