//! The OpenAPI 3.1 document of the HTTP API, generated from the code with utoipa and served at
//! `GET /api/v1/openapi.json`.
//!
//! Every handler carries a `#[utoipa::path]` annotation (method, path, parameters, body and
//! every answer); [`ApiDoc`] lists them. The limits in the schemas (`maxLength`, `maximum`,
//! `maxItems`) come from the constants of `limits.rs`, through the `*_schema` functions here,
//! so the document cannot drift from what the handlers enforce. Answers any route can give
//! (429 and 503, with `Retry-After`) are added to every operation by [`CommonAnswers`].
//!
//! Types that live in `raft-store` or are built with `json!` get a mirror type here that only
//! describes them (raft-store must not depend on web crates). `tests/openapi.rs` checks that
//! the document and the router agree, both ways.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Serialize;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::ToSchema;
use utoipa::openapi::Object;
use utoipa::openapi::ObjectBuilder;
use utoipa::openapi::RefOr;
use utoipa::openapi::Type;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::HttpAuthScheme;
use utoipa::openapi::security::HttpBuilder;
use utoipa::openapi::security::SecurityScheme;

use crate::limits::*;

/// The path the document is served at.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The name of the Bearer API-key security scheme in the document.
pub const SECURITY_SCHEME: &str = "api_key";

/// An ASN that passes `raft_store::asn::is_valid` (check letter included), for examples.
pub const EXAMPLE_ASN: &str = "ASN-2026-0384-7721-T";

/// The pattern of an ASN. The check letter is not expressible as a pattern: a string that
/// matches it can still get 400.
pub const ASN_PATTERN: &str = "^ASN-[0-9]{4}-[0-9]{4}-[0-9]{4}-[A-Z]$";

/// Every error answer: `{"error": {"code", "message"}}`; the message names the field.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: VALIDATION_ERROR, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT,
    /// AGENT_DEACTIVATED, PAYLOAD_TOO_LARGE, METHOD_NOT_ALLOWED, RATE_LIMITED, UNAVAILABLE,
    /// INTERNAL, CORRUPTED.
    #[schema(example = "VALIDATION_ERROR")]
    pub code: String,
    /// For people; names the field at fault.
    #[schema(example = "event_type: required")]
    pub message: String,
}

fn string(min_length: usize, max_length: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min_length))
        .max_length(Some(max_length))
}

fn integer(minimum: u64, maximum: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(minimum as f64))
        .maximum(Some(maximum as f64))
}

/// `asn`: `ASN-YYYY-DDDD-DDDD-L`.
pub fn asn_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ASN_PATTERN))
        .description(Some(
            "An Agent Serial Number, ASN-YYYY-DDDD-DDDD-L; L is a check letter over the 12 digits.",
        ))
        .examples([EXAMPLE_ASN])
        .build()
}

/// No control characters (Unicode category Cc, as Rust's `char::is_control`).
pub const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// `event_type`: 1 to `EVENT_TYPE_CHARS_MAX` characters, no control characters.
pub fn event_type_schema() -> Object {
    string(1, EVENT_TYPE_CHARS_MAX)
        .pattern(Some(NO_CONTROL_PATTERN))
        .description(Some(format!(
            "1 to {EVENT_TYPE_CHARS_MAX} characters, no control characters."
        )))
        .examples(["task_completed"])
        .build()
}

/// Operator, agent and key names: 1 to `NAME_CHARS_MAX` characters, not blank.
pub fn name_schema() -> Object {
    string(1, NAME_CHARS_MAX)
        .pattern(Some(NO_CONTROL_PATTERN))
        .description(Some(format!(
            "1 to {NAME_CHARS_MAX} characters, not only white space, no control characters."
        )))
        .examples(["acme"])
        .build()
}

pub fn severity_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["info", "warning", "error", "critical"]))
        .build()
}

/// `metadata`: an object of at most `METADATA_BYTES_MAX` bytes and `METADATA_DEPTH_MAX` levels.
pub fn metadata_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "Any JSON object of at most {METADATA_BYTES_MAX} bytes as RFC 8785 canonical JSON \
             and at most {METADATA_DEPTH_MAX} levels of nesting (the object itself is level 1). \
             Stored and hashed as canonical JSON."
        )))
        .build()
}

/// The events of a batch: 1 to `BATCH_EVENTS_MAX`.
pub fn batch_events_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "ReportEvent",
        )))
        .min_items(Some(1))
        .max_items(Some(BATCH_EVENTS_MAX))
        .build()
}

pub fn page_schema() -> Object {
    integer(1, u64::from(u32::MAX))
        .default(Some(1.into()))
        .build()
}

/// `per_page` of the activity query: 1 to `PAGE_EVENTS_MAX`, default `PAGE_EVENTS_DEFAULT`.
pub fn per_page_schema() -> Object {
    integer(1, u64::from(PAGE_EVENTS_MAX))
        .default(Some(PAGE_EVENTS_DEFAULT.into()))
        .build()
}

/// `limit` of the ledger listing: 1 to `LEDGER_PAGE_EVENTS_MAX`.
pub fn ledger_limit_schema() -> Object {
    integer(1, LEDGER_PAGE_EVENTS_MAX as u64)
        .default(Some(LEDGER_PAGE_EVENTS_DEFAULT.into()))
        .build()
}

/// A positive integer (`seq`, node ids, `from_seq`).
pub fn positive_schema() -> Object {
    integer(1, u64::MAX).build()
}

/// A tree size (`from`, `to`, `tree_size`).
pub fn size_schema() -> Object {
    integer(0, u64::MAX).build()
}

pub fn consistency_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["linearizable", "local"]))
        .default(Some("linearizable".into()))
        .description(Some(
            "linearizable (the default): the read reflects every write acknowledged before it \
             started; local: this node's state as it is, possibly stale.",
        ))
        .build()
}

/// An ISO 8601 date-time (RFC 3339) or a date.
pub fn time_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "An RFC 3339 date-time like 2026-03-18T14:30:00Z, or a date like 2026-03-18 \
             (its first millisecond for from, its last for to, UTC).",
        ))
        .examples(["2026-03-18"])
        .build()
}

/// Hex of 32 bytes.
pub fn hash_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9a-f]{64}$"))
        .build()
}

/// `Idempotency-Key`: 1 to `IDEMPOTENCY_KEY_BYTES_MAX` bytes of visible ASCII.
pub fn idempotency_key_schema() -> Object {
    string(1, IDEMPOTENCY_KEY_BYTES_MAX)
        .pattern(Some("^[\\x20-\\x7e]*$"))
        .build()
}

pub fn permissions_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["activity:report", "write", "read", "admin"])),
        )
        .min_items(Some(1))
        .build()
}

pub fn agent_status_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["active", "deactivated"]))
        .build()
}

pub fn node_key_status_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["active", "retired"]))
        .build()
}

/// The API's own rate-limit, load-shedding and timeout answers, plus 503 when no leader is
/// known: any route can give them. Also the security scheme and the body limit.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("asn_live_<16 hex key id><48 hex secret>")
                    .description(Some(
                        "An API key: Authorization: Bearer asn_live_… (created by \
                         POST /api/v1/keys; a cluster's first admin key is written by \
                         ledgerd --bootstrap to <data-dir>/admin.key).",
                    ))
                    .build(),
            ),
        );
        let retry_after = utoipa::openapi::HeaderBuilder::new()
            .schema(Some(integer(0, u64::from(u32::MAX)).build()))
            .description(Some("Seconds to wait before trying again."))
            .build();
        let error = |description: &str, retry: bool| {
            let mut builder = ResponseBuilder::new().description(description).content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            );
            if retry {
                builder = builder.header("Retry-After", retry_after.clone());
            }
            builder.build()
        };
        let too_many = error(
            "RATE_LIMITED: this API key (or client) sent more requests than its budget.",
            true,
        );
        let unavailable = error(
            "UNAVAILABLE: no leader known, the node is catching up or overloaded (load \
             shedding), the request timed out, or (a write without an Idempotency-Key) the \
             receiving node's clock is more than a minute ahead of the leader's.",
            true,
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in operations(item) {
                if let Some(RefOr::T(body)) = operation.request_body.as_mut() {
                    body.description = Some(format!(
                        "JSON, at most {REQUEST_BODY_BYTES_MAX} bytes (REQUEST_BODY_BYTES_MAX); \
                         a larger body gets 413. The Content-Type is not checked."
                    ));
                }
                let responses = &mut operation.responses.responses;
                responses
                    .entry("429".to_owned())
                    .or_insert_with(|| RefOr::T(too_many.clone()));
                responses
                    .entry("503".to_owned())
                    .or_insert_with(|| RefOr::T(unavailable.clone()));
            }
        }
    }
}

/// The operations of a path item, whatever their methods.
pub fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The methods a path item documents, as HTTP spells them (`GET`, …).
pub fn methods(item: &utoipa::openapi::PathItem) -> Vec<&'static str> {
    [
        ("GET", item.get.is_some()),
        ("PUT", item.put.is_some()),
        ("POST", item.post.is_some()),
        ("DELETE", item.delete.is_some()),
        ("OPTIONS", item.options.is_some()),
        ("HEAD", item.head.is_some()),
        ("PATCH", item.patch.is_some()),
        ("TRACE", item.trace.is_some()),
    ]
    .into_iter()
    .filter_map(|(method, present)| present.then_some(method))
    .collect()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "asn-ledger",
        description = "The HTTP API of an asn-ledger node: a replicated, append-only ledger of \
                       AI-agent activity. Every error is {\"error\": {\"code\", \"message\"}}. \
                       Any node takes any request (writes are forwarded to the leader).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::livez,
        crate::readyz,
        crate::metrics_text,
        openapi_json,
        crate::node_status,
        crate::cluster_status,
        crate::add_node,
        crate::remove_node,
        crate::transfer_leader,
        crate::events::report,
        crate::events::report_batch,
        crate::events::agent_activity,
        crate::admin::create_operator,
        crate::admin::get_operator,
        crate::admin::create_key,
        crate::admin::revoke_key,
        crate::admin::create_agent,
        crate::admin::get_agent,
        crate::admin::deactivate_agent,
        crate::events::ledger_events,
        crate::events::ledger_head,
        crate::ledger::keys,
        crate::ledger::checkpoint,
        crate::ledger::inclusion,
        crate::ledger::consistency,
        crate::ledger::verify_now,
        crate::trust::trust_score,
        crate::explorer::index,
        crate::explorer::asset,
    ),
    modifiers(&CommonAnswers),
    tags(
        (name = "health", description = "Liveness and readiness."),
        (name = "cluster", description = "Nodes and membership."),
        (name = "activity", description = "Reporting and querying agents' activity."),
        (name = "admin", description = "Operators, API keys and agents."),
        (name = "ledger", description = "The ledger in order, and what third parties verify with."),
        (name = "meta", description = "This document."),
        (name = "explorer", description = "The ledger explorer served to browsers."),
    ),
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(ApiDoc::openapi)
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI document.", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Response {
    static BODY: OnceLock<Result<String, String>> = OnceLock::new();
    match BODY.get_or_init(|| document().to_json().map_err(|e| e.to_string())) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body.as_str()).into_response(),
        Err(error) => crate::ApiError::internal(format!("openapi: {error}")).into_response(),
    }
}
