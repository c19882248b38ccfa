//! Goal (issue 8): the explorer every node serves at `/` works in a real browser: search an
//! agent, see its status and trust score, page through its activity, open an entry and verify
//! it in the browser (WebCrypto SHA-256 and Ed25519, inclusion proof, signed checkpoint); an
//! entry altered on the way to the browser fails verification with a reason.
//!
//! Method: 3 nodes; 12 events of one agent; headless Debian `chromium` driven through
//! `chromedriver` (WebDriver, the `fantoccini` client). The tampering is a small HTTP proxy in
//! this test ([`TamperingProxy`]) that forwards to a node and changes the metadata of every event
//! in activity listings. Also checks the explorer's content types and Content-Security-Policy, and that the
//! page does not overflow a phone-sized viewport.
//!
//! Browsers: `chromium` and `chromedriver` (Debian packages `chromium`, `chromium-driver`;
//! `.ci/run` installs them). Missing ones fail the test, naming the install command, unless
//! `LEDGER_BROWSER_TESTS=skip` says that this machine has no browser: then it prints NOT RUN.
//! `LEDGER_EXPLORER_SCREENSHOTS=DIR` saves the screenshots there (docs/ holds the committed
//! ones); otherwise they go to the system temporary directory.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use cluster_tests::{Cluster, free_addr, slow_test, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::CONDITION_TIMEOUT;

const NODE: u64 = 1;
/// Largest request head the tampering proxy reads.
const PROXY_REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_verifies_entries_in_a_browser() {
    let Some(guard) = slow_test("t22_explorer") else {
        return;
    };
    if std::env::var("LEDGER_BROWSER_TESTS").as_deref() == Ok("skip") {
        eprintln!("t22_explorer: NOT RUN (LEDGER_BROWSER_TESTS=skip: no browser on this machine)");
        return;
    }
    guard.run(scenario()).await;
}

fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "{program} is not installed: apt-get install -y chromium chromium-driver \
                 (or set LEDGER_BROWSER_TESTS=skip on a machine without a browser)"
            )
        })
}

/// A chromedriver process, killed on drop.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> Result<(Driver, Client)> {
    let chromium = which("chromium")?;
    let chromedriver = which("chromedriver")?;
    let addr = free_addr()?;
    let child = std::process::Command::new(chromedriver)
        .arg(format!("--port={}", addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromedriver")?;
    let driver = Driver(child);
    let url = format!("http://{addr}");
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1500", "--hide-scrollbars"],
        }
    });
    let capabilities = capabilities.as_object().cloned().context("capabilities")?;
    let client = wait_for(
        CONDITION_TIMEOUT,
        "a browser session through chromedriver",
        async || {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            Ok(ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await?)
        },
    )
    .await?;
    Ok((driver, client))
}

/// Waits until the text of `css` satisfies `ready`; returns it.
async fn wait_text(client: &Client, css: &str, ready: impl Fn(&str) -> bool) -> Result<String> {
    let found = wait_for(
        CONDITION_TIMEOUT,
        &format!("the expected text in {css}"),
        async || {
            let text = client.find(Locator::Css(css)).await?.text().await?;
            ensure!(ready(&text), "last {text:?}");
            Ok(text)
        },
    )
    .await;
    match found {
        Ok(text) => Ok(text),
        Err(error) => bail!("{error:#}; status {:?}", status_text(client).await),
    }
}

async fn status_text(client: &Client) -> String {
    match client.find(Locator::Css("#status")).await {
        Ok(element) => element.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn click(client: &Client, css: &str) -> Result<()> {
    client
        .find(Locator::Css(css))
        .await
        .with_context(|| format!("find {css}"))?
        .click()
        .await
        .with_context(|| format!("click {css}"))
}

async fn type_into(client: &Client, css: &str, text: &str) -> Result<()> {
    let element = client.find(Locator::Css(css)).await?;
    element.clear().await?;
    element.send_keys(text).await?;
    Ok(())
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("LEDGER_EXPLORER_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

async fn screenshot(client: &Client, name: &str) -> Result<()> {
    let png = client.screenshot().await?;
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("t22: screenshot {}", path.display());
    Ok(())
}

/// WebDriver's Enter key.
const ENTER: &str = "\u{E007}";

/// Searches `asn` (with `key` if given) on the explorer at `base`: with the key, by clicking
/// Search; without, by the keyboard alone (Enter in the ASN field).
async fn search(client: &Client, base: &str, asn: &str, key: Option<&str>) -> Result<()> {
    client.goto(&format!("{base}/")).await?;
    type_into(client, "#asn", asn).await?;
    match key {
        Some(key) => {
            type_into(client, "#key", key).await?;
            click(client, "#search-button").await?;
        }
        None => {
            client
                .find(Locator::Css("#asn"))
                .await?
                .send_keys(ENTER)
                .await?;
        }
    }
    wait_text(client, "#agent-asn", |t| t == asn).await?;
    // Focus moves to the agent's heading, for keyboard and screen-reader users: once the
    // activity has loaded too, which comes after the agent's fields are filled in.
    wait_for(
        CONDITION_TIMEOUT,
        "focus on the agent's heading",
        async || {
            let focused = client
                .execute("return document.activeElement.id", vec![])
                .await?;
            ensure!(
                focused == "agent-title",
                "focus is on {focused} after a search"
            );
            Ok(())
        },
    )
    .await
}

/// Opens the first listed entry, verifies it; returns the result line.
async fn verify_first_entry(client: &Client) -> Result<String> {
    let seq = wait_text(client, "#events-body tr td", |t| !t.is_empty()).await?;
    click(client, "#events-body tr .open-entry").await?;
    wait_text(client, "#entry-title", |t| t == format!("Entry {seq}")).await?;
    wait_text(client, "#entry-checkpoint", |t| t.contains('\u{2014}')).await?;
    click(client, "#verify").await?;
    wait_text(client, "#verify-result", |t| {
        t == "verified" || t.starts_with("failed")
    })
    .await
}

async fn scenario() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let api = cluster.api();
    let owner = api.operator_key()?;
    let asn = api.agent_asn(0)?;
    let other = api.agent_asn(1)?;
    let mut events = Vec::new();
    for n in 0..12 {
        let severity = ["info", "info", "warning", "error"][n % 4];
        let event_type = if n % 4 == 0 {
            "task_completed"
        } else {
            "task_run"
        };
        events.push(
            json!({"asn": asn, "event_type": event_type, "severity": severity,
                           "metadata": {"n": n, "note": "café ✓", "x": 1.5e-7}}),
        );
        events.push(json!({"asn": other, "event_type": "noise"}));
    }
    api.report_batch(NODE, &owner, &events, None).await?;
    let base = api.base_url(NODE)?;

    // Content types and the Content-Security-Policy.
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/explorer/app.js", "text/javascript; charset=utf-8"),
        ("/explorer/style.css", "text/css; charset=utf-8"),
    ] {
        let response = api.http().get(format!("{base}{path}")).send().await?;
        ensure!(response.status() == 200, "{path}: {}", response.status());
        let headers = response.headers();
        ensure!(
            headers.get("content-type").and_then(|v| v.to_str().ok()) == Some(content_type),
            "{path}: content type {:?}",
            headers.get("content-type")
        );
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ensure!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: CSP {csp:?}"
        );
    }
    let missing = api
        .http()
        .get(format!("{base}/explorer/nope.js"))
        .send()
        .await?;
    ensure!(
        missing.status() == 404,
        "unknown asset: {}",
        missing.status()
    );

    let served: Value = api
        .http()
        .get(format!("{base}/api/v1/agents/{asn}/trust-score"))
        .send()
        .await?
        .json()
        .await?;
    let score = served["trust_score"].to_string();

    let (_driver, client) = browser().await?;
    let outcome = browse(&client, &base, &asn, &owner, &score).await;
    let tampered = match outcome {
        Ok(()) => tamper(&client, &base, &asn).await,
        Err(error) => Err(error),
    };
    let _ = client.close().await;
    tampered?;
    cluster.finish();
    Ok(())
}

async fn browse(client: &Client, base: &str, asn: &str, owner: &str, score: &str) -> Result<()> {
    // Search with the owner's key: the agent, its status and score.
    search(client, base, asn, Some(owner)).await?;
    wait_text(client, "#agent-status", |t| t == "active").await?;
    wait_text(client, "#trust-score", |t| t == score).await?;
    wait_text(client, "#page-info", |t| t == "Page 1 of 1 (12 events)").await?;
    // The key is nowhere but in the page's memory.
    let leaks = client
        .execute(
            "return [location.href, document.cookie, localStorage.length, sessionStorage.length]",
            vec![],
        )
        .await?;
    ensure!(
        !leaks.to_string().contains(owner) && leaks[2] == 0 && leaks[3] == 0,
        "the key leaked: {leaks}"
    );

    // Five per page: three pages; page 2 starts five events older.
    client
        .find(Locator::Css("#f-per-page"))
        .await?
        .select_by_value("5")
        .await?;
    click(client, "#apply-filters").await?;
    wait_text(client, "#page-info", |t| t == "Page 1 of 3 (12 events)").await?;
    let newest: u64 = wait_text(client, "#events-body tr td", |t| !t.is_empty())
        .await?
        .parse()?;
    click(client, "#next-page").await?;
    wait_text(client, "#page-info", |t| t == "Page 2 of 3 (12 events)").await?;
    let rows = client.find_all(Locator::Css("#events-body tr")).await?;
    ensure!(rows.len() == 5, "page 2 has {} rows", rows.len());
    let first_on_two: u64 = wait_text(client, "#events-body tr td", |t| !t.is_empty())
        .await?
        .parse()?;
    ensure!(
        first_on_two < newest,
        "page 2 starts at {first_on_two}, page 1 at {newest}"
    );
    // A type filter, as the API has it.
    type_into(client, "#f-type", "task_completed").await?;
    click(client, "#apply-filters").await?;
    wait_text(client, "#page-info", |t| t == "Page 1 of 1 (3 events)").await?;
    type_into(client, "#f-type", "").await?;
    click(client, "#apply-filters").await?;
    wait_text(client, "#page-info", |t| t == "Page 1 of 3 (12 events)").await?;
    screenshot(client, "explorer-agent.png").await?;

    // Open the newest entry and verify it in the browser.
    let result = verify_first_entry(client).await?;
    ensure!(
        result == "verified",
        "the untouched entry did not verify: {result}"
    );
    let steps = wait_text(client, "#verify-steps", |t| !t.is_empty()).await?;
    for needle in ["event hash", "signature", "checkpoint", "inclusion"] {
        ensure!(steps.contains(needle), "no {needle} step in {steps:?}");
    }
    eprintln!("t22: verified in the browser:\n{steps}");
    client
        .execute(
            "document.getElementById('entry-title').scrollIntoView()",
            vec![],
        )
        .await?;
    screenshot(client, "explorer-verified.png").await?;

    // A phone-sized viewport: nothing wider than the screen.
    client.set_window_size(390, 844).await?;
    let widths = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await?;
    ensure!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the page overflows a phone screen: {widths}"
    );
    screenshot(client, "explorer-phone.png").await?;
    client.set_window_size(1100, 1500).await?;
    Ok(())
}

/// Changes every listed event's metadata on the way to the browser.
fn alter_activity(path: &str, body: &mut Value) {
    if path.contains("/activity")
        && let Some(events) = body["data"].as_array_mut()
    {
        for event in events {
            event["metadata"]["tampered"] = json!(true);
        }
    }
}

/// Changes a hash of every listed event's answer-group proof on the way to the browser (a
/// page's events share one signature, each with its proof: docs/VERIFYING.md section 9).
fn alter_group_proof(path: &str, body: &mut Value) {
    if path.contains("/activity")
        && let Some(events) = body["data"].as_array_mut()
    {
        for event in events {
            if let Some(Value::String(hash)) = event.pointer_mut("/signature_proof/hashes/0") {
                let flipped = if hash.starts_with('0') { "1" } else { "0" };
                hash.replace_range(..1, flipped);
            }
        }
    }
}

async fn tamper(client: &Client, base: &str, asn: &str) -> Result<()> {
    let proxy = TamperingProxy::start(base, alter_activity).await?;
    search(client, &proxy.url(), asn, None).await?;
    let result = verify_first_entry(client).await?;
    eprintln!("t22: tampered entry: {result}");
    ensure!(
        result.starts_with("failed: the event's hash does not match its fields"),
        "a tampered entry must fail on its hash: {result}"
    );
    drop(proxy);
    let proxy = TamperingProxy::start(base, alter_group_proof).await?;
    search(client, &proxy.url(), asn, None).await?;
    let result = verify_first_entry(client).await?;
    eprintln!("t22: tampered signature proof: {result}");
    ensure!(
        result.starts_with("failed: the group signature of"),
        "an entry whose signature proof was changed must fail on its signature: {result}"
    );
    Ok(())
}

/// A small HTTP proxy in front of one node that lets a test alter JSON answers (GET only, one
/// request per connection). Stops when dropped.
pub(crate) struct TamperingProxy {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TamperingProxy {
    /// Forwards to `target` (`http://host:port`); `alter(path, body)` may change each JSON
    /// answer.
    pub(crate) async fn start(target: &str, alter: fn(&str, &mut Value)) -> Result<Self> {
        let addr = free_addr()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let target = target.to_string();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_tampered(stream, target.clone(), http.clone(), alter));
            }
        });
        Ok(Self { addr, task })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TamperingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request through the tampering proxy: forwards a GET to `target` and lets `alter`
/// change a JSON answer.
async fn serve_tampered(
    mut stream: tokio::net::TcpStream,
    target: String,
    http: reqwest::Client,
    alter: fn(&str, &mut Value),
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if head.len() > PROXY_REQUEST_HEAD_BYTES_MAX {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let mut request = http.get(format!("{target}{path}"));
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            request = request.header("authorization", value.trim());
        }
    }
    let Ok(response) = request.send().await else {
        return;
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (content_type, csp) = (header("content-type"), header("content-security-policy"));
    let Ok(mut body) = response.bytes().await.map(|b| b.to_vec()) else {
        return;
    };
    if let Ok(mut json) = serde_json::from_slice::<Value>(&body) {
        alter(&path, &mut json);
        body = json.to_string().into_bytes();
    }
    let mut answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if !csp.is_empty() {
        answer.push_str(&format!("Content-Security-Policy: {csp}\r\n"));
    }
    answer.push_str("\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}
