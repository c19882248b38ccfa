//! Protection of a node against its clients: per-API-key and per-address rate limits (429 with
//! `Retry-After`), load shedding (503 when too many requests are in flight) and a timeout on
//! every request. The budgets are `ledgerd` options (docs/OPERATIONS.md has the table).
//!
//! - A request with a valid API key is charged to that key's budget when the key is
//!   authenticated ([`Protection::charge_key`], called from `auth`), so a client cannot spend
//!   another key's budget by presenting its id with a wrong secret.
//! - A request without `Authorization` is charged to its client address's budget.
//! - `/livez`, `/readyz` and `/metrics` are never limited, shed or timed out: probes and
//!   scrapes must work on an overloaded node.

use std::net::IpAddr;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use governor::clock::Clock;
use governor::clock::DefaultClock;
use tokio::sync::Semaphore;

use crate::ApiError;
use crate::Backend;

/// Distinct keys (API keys or client addresses) a rate limiter tracks before it forgets the
/// ones whose budget is full again.
pub const RATE_LIMIT_TRACKED_MAX: usize = 100_000;

/// Paths that are never limited, shed or timed out.
const EXEMPT_PATHS: [&str; 3] = ["/livez", "/readyz", "/metrics"];

/// The budgets. A rate of 0 turns that limit off.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// Sustained requests per second for one API key.
    pub key_requests_per_s: u32,
    /// Requests one API key may send at once above its sustained rate.
    pub key_burst_requests: u32,
    /// Sustained requests per second for one client address sending no API key.
    pub anonymous_requests_per_s: u32,
    /// Burst for one client address sending no API key.
    pub anonymous_burst_requests: u32,
    /// Requests served at once by this node; more get 503 at once.
    pub in_flight_max: usize,
    /// Longest time a request may take before it is answered 503.
    pub request_timeout: Duration,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            key_requests_per_s: 0,
            key_burst_requests: 1,
            anonymous_requests_per_s: 0,
            anonymous_burst_requests: 1,
            in_flight_max: Semaphore::MAX_PERMITS,
            request_timeout: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug)]
pub struct Protection {
    budgets: Budgets,
    keys: Option<DefaultKeyedRateLimiter<String>>,
    anonymous: Option<DefaultKeyedRateLimiter<IpAddr>>,
    in_flight: Arc<Semaphore>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_s: u32,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let per_s = NonZeroU32::new(per_s)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_s);
    Some(governor::RateLimiter::keyed(
        Quota::per_second(per_s).allow_burst(burst),
    ))
}

/// Checks one request against a keyed limiter; the error is the wait until it would pass.
fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), Duration> {
    if limiter.len() > RATE_LIMIT_TRACKED_MAX {
        limiter.retain_recent();
    }
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

/// `Retry-After` in whole seconds, at least 1.
fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX)
}

impl Protection {
    pub fn new(budgets: Budgets) -> Self {
        Self {
            keys: limiter(budgets.key_requests_per_s, budgets.key_burst_requests),
            anonymous: limiter(
                budgets.anonymous_requests_per_s,
                budgets.anonymous_burst_requests,
            ),
            in_flight: Arc::new(Semaphore::new(
                budgets.in_flight_max.min(Semaphore::MAX_PERMITS),
            )),
            budgets,
        }
    }

    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Charges one request to an authenticated API key.
    pub fn charge_key(&self, key_id: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.keys else {
            return Ok(());
        };
        check(limiter, &key_id.to_owned()).map_err(|wait| {
            rate_limited(
                wait,
                format!(
                    "Authorization: API key {key_id} is over its budget of {} requests/s (burst {})",
                    self.budgets.key_requests_per_s, self.budgets.key_burst_requests
                ),
            )
        })
    }

    fn charge_address(&self, address: IpAddr) -> Result<(), ApiError> {
        let Some(limiter) = &self.anonymous else {
            return Ok(());
        };
        check(limiter, &address).map_err(|wait| {
            rate_limited(
                wait,
                format!(
                    "requests without an API key from {address} are over their budget of {} requests/s (burst {}); send an API key for a budget of its own",
                    self.budgets.anonymous_requests_per_s, self.budgets.anonymous_burst_requests
                ),
            )
        })
    }
}

fn rate_limited(wait: Duration, message: String) -> ApiError {
    let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
    error.retry_after_secs = Some(retry_after_secs(wait));
    error
}

/// Middleware: load shedding, the per-address limit for requests without a key, and the
/// request timeout.
pub async fn protect<B: Backend>(
    State(backend): State<Arc<B>>,
    request: Request,
    next: Next,
) -> Response {
    if EXEMPT_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let protection = backend.protection();
    let metrics = backend.http_metrics();
    let Ok(_permit) = Arc::clone(&protection.in_flight).try_acquire_owned() else {
        metrics.rejected("overloaded");
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            format!(
                "this node is serving its maximum of {} requests at once (--http-requests-in-flight-max); retry, or ask another node",
                protection.budgets.in_flight_max
            ),
        );
        error.retry_after_secs = Some(1);
        return error.into_response();
    };
    if !request.headers().contains_key(header::AUTHORIZATION)
        && let Some(ConnectInfo(address)) = request.extensions().get::<ConnectInfo<SocketAddr>>()
        && let Err(error) = protection.charge_address(address.ip())
    {
        metrics.rejected("rate_limited");
        return error.into_response();
    }
    let timeout = protection.budgets.request_timeout;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics.rejected("timeout");
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TIMEOUT",
                format!(
                    "the request took longer than {} ms (--http-request-timeout-ms); a write may still be recorded: retry it with the same Idempotency-Key",
                    timeout.as_millis()
                ),
            );
            error.retry_after_secs = Some(1);
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_429_with_retry_after() {
        let protection = Protection::new(Budgets {
            key_requests_per_s: 1,
            key_burst_requests: 3,
            ..Budgets::default()
        });
        for _ in 0..3 {
            assert!(protection.charge_key("k1").is_ok());
        }
        let error = protection.charge_key("k1").expect_err("over budget");
        assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.code, "RATE_LIMITED");
        assert!(error.retry_after_secs.is_some_and(|s| s >= 1));
        // Another key has a budget of its own.
        assert!(protection.charge_key("k2").is_ok());
    }

    #[test]
    fn rate_zero_means_no_limit() {
        let protection = Protection::new(Budgets::default());
        for _ in 0..10_000 {
            assert!(protection.charge_key("k").is_ok());
        }
    }
}
