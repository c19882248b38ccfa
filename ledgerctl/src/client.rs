//! [`Client`]: HTTP to a cluster through a list of node URLs, with fail-over.
//!
//! A request goes to the node that answered last (the first URL at start). When a node cannot
//! be reached (connection refused or reset, DNS, TLS: the request never got there), the next
//! URL is tried, and so on once around the list. A timeout after the request was sent moves on
//! only for requests that are safe to repeat (reads, and writes that carry an
//! `Idempotency-Key`); anything else reports the timeout (exit 5) rather than risk a second
//! write. Error answers (`{"error":{"code","message"}}`) become a [`CtlError`] whose exit code
//! follows the status ([`Exit::of_status`]).

use std::cell::Cell;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::exit::ApiFailure;
use crate::exit::CtlError;
use crate::exit::Exit;

/// Timeout of one HTTP request, in seconds, unless a command needs longer.
pub const REQUEST_TIMEOUT_SECS: u64 = 30;

pub struct Client {
    urls: Vec<String>,
    key: Option<String>,
    http: reqwest::blocking::Client,
    /// Index in `urls` of the node that answered last.
    current: Cell<usize>,
}

/// One request.
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Option<&'a Value>,
    pub headers: &'a [(&'a str, &'a str)],
    /// Safe to send again to another node after a timeout (a read, or an idempotent write).
    pub repeatable: bool,
    /// Overrides [`REQUEST_TIMEOUT_SECS`].
    pub timeout: Option<Duration>,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Self {
            method: Method::GET,
            path,
            body: None,
            headers: &[],
            repeatable: true,
            timeout: None,
        }
    }

    pub fn post(path: &'a str, body: &'a Value) -> Self {
        Self {
            method: Method::POST,
            path,
            body: Some(body),
            headers: &[],
            repeatable: false,
            timeout: None,
        }
    }
}

/// The `message` of an error body, or the body itself.
fn error_text(status: reqwest::StatusCode, body: &Value) -> String {
    match (
        body["error"]["code"].as_str(),
        body["error"]["message"].as_str(),
    ) {
        (Some(code), Some(message)) => format!("{} {code}: {message}", status.as_u16()),
        _ => format!("{status}: {body}"),
    }
}

impl Client {
    pub fn new(urls: Vec<String>, key: Option<String>) -> Result<Self, CtlError> {
        if urls.is_empty() {
            return Err(CtlError::usage(
                "no node URL: pass --url, set LEDGER_URL, or put `urls` in the config file",
            ));
        }
        for url in &urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(CtlError::usage(format!(
                    "--url {url}: must start with http:// or https://"
                )));
            }
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS))
            .build()
            .map_err(|e| CtlError::usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            key,
            http,
            current: Cell::new(0),
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL of the node that answered last (the first URL before any request).
    pub fn current_url(&self) -> &str {
        &self.urls[self.current.get()]
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Fails with exit 2 when no key is configured.
    pub fn require_key(&self) -> Result<(), CtlError> {
        match self.key {
            Some(_) => Ok(()),
            None => Err(CtlError::usage(
                "this command needs an API key: pass --key, set LEDGER_API_KEY, or put `key` in \
                 the config file",
            )),
        }
    }

    /// Sends `request` and returns the status and JSON body of a 2xx answer.
    pub fn send(&self, request: &Request<'_>) -> Result<Value, CtlError> {
        let count = self.urls.len();
        let start = self.current.get();
        let mut unreachable = Vec::new();
        for step in 0..count {
            let index = (start + step) % count;
            let url = format!("{}{}", self.urls[index], request.path);
            let mut builder = self.http.request(request.method.clone(), &url);
            if let Some(key) = &self.key {
                builder = builder.bearer_auth(key);
            }
            for (name, value) in request.headers {
                builder = builder.header(*name, *value);
            }
            if let Some(body) = request.body {
                builder = builder.json(body);
            }
            if let Some(timeout) = request.timeout {
                builder = builder.timeout(timeout);
            }
            let response = match builder.send() {
                Ok(response) => response,
                Err(error) if error.is_connect() || (error.is_timeout() && request.repeatable) => {
                    unreachable.push(format!("{}: {}", self.urls[index], describe(&error)));
                    continue;
                }
                Err(error) => {
                    return Err(CtlError::new(
                        Exit::Unavailable,
                        format!(
                            "{url}: {} (not retried elsewhere: the request may have been applied)",
                            describe(&error)
                        ),
                    ));
                }
            };
            self.current.set(index);
            let status = response.status();
            let retry_after_secs = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = response.text().map_err(|e| {
                CtlError::new(Exit::Unavailable, format!("{url}: reading the answer: {e}"))
            })?;
            let body: Value = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).map_err(|_| {
                    CtlError::new(
                        Exit::of_status(status.as_u16()).max_failed(),
                        format!("{url}: {status}: not JSON: {text}"),
                    )
                })?
            };
            if status.is_success() {
                return Ok(body);
            }
            let mut error = CtlError::new(
                Exit::of_status(status.as_u16()),
                format!("{url}: {}", error_text(status, &body)),
            );
            error.api = Some(ApiFailure {
                status: status.as_u16(),
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message: body["error"]["message"]
                    .as_str()
                    .map_or_else(|| body.to_string(), str::to_owned),
                retry_after_secs,
            });
            return Err(error);
        }
        Err(CtlError::new(
            Exit::Unavailable,
            format!("no node could be reached: {}", unreachable.join("; ")),
        ))
    }

    pub fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.send(&Request::get(path))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send(&Request::post(path, body))
    }
}

impl Exit {
    /// A non-JSON 2xx is still a failure.
    fn max_failed(self) -> Exit {
        if self == Exit::Ok { Exit::Failed } else { self }
    }
}

fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode_query("2026-03-18T10:00:00+01:00"),
            "2026-03-18T10%3A00%3A00%2B01%3A00"
        );
        assert_eq!(encode_query("task completed"), "task%20completed");
    }

    #[test]
    fn no_url_is_a_usage_error() {
        let error = Client::new(Vec::new(), None).err().map(|e| e.exit);
        assert_eq!(error, Some(Exit::Usage));
        let error = Client::new(vec!["127.0.0.1:1".into()], None)
            .err()
            .map(|e| e.exit);
        assert_eq!(error, Some(Exit::Usage));
    }

    #[test]
    fn an_unreachable_node_is_skipped_and_none_reachable_is_exit_5() {
        // Two ports nothing listens on: both are tried, then exit 5.
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("addr").port();
            drop(listener);
            format!("http://127.0.0.1:{port}")
        };
        let urls = vec![closed(), closed()];
        let client = Client::new(urls.clone(), None).expect("client");
        let error = client.get("/livez").expect_err("unreachable");
        assert_eq!(error.exit, Exit::Unavailable);
        for url in &urls {
            assert!(error.message.contains(url.as_str()), "{}", error.message);
        }
    }
}
