//! `ledgerd`: parses the configuration, runs the node, and turns any start-up failure into one
//! line on stderr and exit code 2.

/// sled copies tree nodes on write, so the write path allocates and frees a lot; mimalloc cut
/// the CPU spent in glibc's malloc (half of the leader's profile under batch load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // mimalloc asks for transparent huge pages on its arenas, and what it hands back to the
    // kernel is faulted in again as a 2 MiB page, zeroed, and with the kernel's default
    // `defrag=madvise` compacted for first: one client's slowest report took 65-120 ms with
    // them against 24-43 ms without (docs/OPERATIONS.md, "Memory"). Off for this process only;
    // a kernel too old to know the flag keeps them.
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("ledgerd: warning: cannot turn off transparent huge pages: {error}");
    }
    let config = match node::config::Config::load() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ledgerd: error: {message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = config.validate() {
        eprintln!("ledgerd: error: {message}");
        std::process::exit(2);
    }
    let runtime = start_runtime("the async runtime", config.worker_threads, None);
    // Raft on a runtime of its own (`--raft-worker-threads`, docs/OPERATIONS.md "Threads"):
    // an AppendEntries, a follower's answer or a commit then waits for the OS to schedule
    // Raft's thread, never in a queue behind the client requests the API's workers are busy
    // with. Not for `--force-single-voter`, which runs no Raft.
    let raft_runtime = (config.raft_worker_threads > 0 && !config.force_single_voter).then(|| {
        start_runtime(
            "Raft's async runtime",
            config.raft_worker_threads,
            Some("raft"),
        )
    });
    let raft_handle = raft_runtime.as_ref().unwrap_or(&runtime).handle().clone();
    match runtime.block_on(node::run(config, raft_handle)) {
        Ok(()) => {}
        Err(node::RunError::Startup(error)) => {
            let message = format!("{error:#}").replace('\n', " ");
            eprintln!("ledgerd: error: {message}");
            std::process::exit(2);
        }
        Err(node::RunError::Fatal(message)) => {
            eprintln!("ledgerd: fatal: {}", message.replace('\n', " "));
            std::process::exit(70);
        }
    }
}

/// A multi-thread tokio runtime with `workers` threads (0: one per core), or exit code 2 with
/// one line on stderr.
fn start_runtime(what: &str, workers: usize, name: Option<&str>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    if let Some(name) = name {
        builder.thread_name(name);
    }
    match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ledgerd: error: cannot start {what}: {error}");
            std::process::exit(2);
        }
    }
}
