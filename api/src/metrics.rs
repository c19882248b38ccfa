//! HTTP metrics (Prometheus): requests and their latency by route and status, requests in
//! flight, and the requests that protection turned away. The node registers them in its
//! registry ([`HttpMetrics::register`]) and serves the whole registry at `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Backend;

/// Upper bounds of the request latency buckets, in seconds (0.5 ms to about 16 s).
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    /// The route's pattern (`/api/v1/agents/{asn}/activity`), never the raw path, so the number
    /// of series stays bounded; unmatched paths are `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `rate_limited` (429), `overloaded` (503, load shedding) or `timeout` (503).
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    rejected: Family<RejectLabels, Counter>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            in_flight: Gauge::default(),
            rejected: Family::default(),
        }
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ledger_http_requests",
            "HTTP requests answered, by method, route and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "ledger_http_request_duration",
            "HTTP request latency from the first byte of the request to the response head",
            prometheus_client::registry::Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "ledger_http_requests_in_flight",
            "HTTP requests being served now",
            self.in_flight.clone(),
        );
        registry.register(
            "ledger_http_rejected",
            "HTTP requests turned away by protection, by reason",
            self.rejected.clone(),
        );
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }
}

/// One request counted in `ledger_http_requests_in_flight` until it is dropped: also when its
/// client goes away first (hyper then drops the request's future, and a `dec` after an `.await`
/// would never run).
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn count(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts and times every request, by its matched route.
pub async fn track<B: Backend>(
    State(backend): State<Arc<B>>,
    request: Request,
    next: Next,
) -> Response {
    let metrics = backend.http_metrics();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let counted = InFlight::count(&metrics.in_flight);
    let response = next.run(request).await;
    drop(counted);
    let labels = RouteLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
