//! The HTTP side: Mailpit's REST API v1, the HTML/text views, live
//! updates (server-sent events) and the embedded web UI.
//!
//! Errors: an unknown message or part is `404`, a malformed ID, query or
//! body is `400`, both with Mailpit's JSON error shape `{"Error": "..."}`.
//! Only a storage failure is a `500`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    id, mime,
    search::Query as Search,
    shutdown::CancelSignal,
    store::{Event, Selection, Store, StoreError, Summary},
    ui,
};

/// Default page size, as Mailpit.
const DEFAULT_LIMIT: u64 = 50;
/// Largest page served.
const MAX_LIMIT: u64 = 10_000;

/// The web application's state.
#[derive(Clone)]
pub struct AppState {
    /// The message store.
    pub store: Store,
    /// Completes when the server shuts down (ends the event streams).
    pub shutdown: CancelSignal,
}

/// An API error: status and message, sent as `{"Error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
    fn not_found() -> Self {
        ApiError(StatusCode::NOT_FOUND, "Not found".into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "Error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router: API, views, events and UI.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/v1/messages",
            get(list).put(set_read).delete(delete_messages),
        )
        .route("/api/v1/message/{id}", get(message))
        .route("/api/v1/message/{id}/headers", get(headers))
        .route("/api/v1/message/{id}/raw", get(raw))
        .route("/api/v1/message/{id}/part/{part}", get(part))
        .route("/api/v1/search", get(search).delete(delete_search))
        .route("/api/v1/info", get(info))
        .route("/api/v1/tags", get(|| async { Json(Vec::<String>::new()) }))
        .route("/api/v1/webui", get(webui))
        .route("/api/events", get(events))
        .route("/view/{file}", get(view))
        .merge(ui::router())
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
}

/// Mailpit's `MessagesSummary`.
#[derive(Serialize)]
struct MessagesSummary {
    total: u64,
    unread: u64,
    /// Messages in this page (older Mailpit clients read it).
    count: u64,
    messages_count: u64,
    messages_unread: u64,
    start: u64,
    tags: Vec<String>,
    messages: Vec<Summary>,
}

/// `start`, `limit` (and `query`) from the query string; a malformed
/// number is a 400.
struct Paging {
    start: u64,
    limit: u64,
    query: Option<String>,
}

fn paging(q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> ApiResult<Paging> {
    let Query(pairs) = q.map_err(|e| ApiError::bad(format!("malformed query string: {e}")))?;
    let mut p = Paging {
        start: 0,
        limit: DEFAULT_LIMIT,
        query: None,
    };
    for (k, v) in pairs {
        let number = |v: &str| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::bad(format!("{k} must be a non-negative integer, got {v:?}"))
            })
        };
        match k.as_str() {
            "start" => p.start = number(&v)?,
            "limit" => p.limit = number(&v)?.min(MAX_LIMIT),
            "query" => p.query = Some(v),
            _ => {}
        }
    }
    if p.limit == 0 {
        p.limit = DEFAULT_LIMIT;
    }
    Ok(p)
}

async fn list(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<MessagesSummary>> {
    let p = paging(q)?;
    let messages = s.store.list(p.start, p.limit).await?;
    let (total, unread) = s.store.stats();
    Ok(Json(MessagesSummary {
        total,
        unread,
        count: messages.len() as u64,
        messages_count: total,
        messages_unread: unread,
        start: p.start,
        tags: Vec::new(),
        messages,
    }))
}

fn parse_search(p: &Paging) -> ApiResult<Search> {
    let text = p
        .query
        .as_deref()
        .ok_or_else(|| ApiError::bad("missing query parameter: query"))?;
    Search::parse(text).map_err(|e| ApiError::bad(e.to_string()))
}

async fn search(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<MessagesSummary>> {
    let p = paging(q)?;
    let query = parse_search(&p)?;
    let page = s.store.search(query, p.start, p.limit).await?;
    let (total, unread) = s.store.stats();
    Ok(Json(MessagesSummary {
        total,
        unread,
        count: page.messages.len() as u64,
        messages_count: page.matching,
        messages_unread: page.unread,
        start: p.start,
        tags: Vec::new(),
        messages: page.messages,
    }))
}

async fn delete_search(
    State(s): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<&'static str> {
    let query = parse_search(&paging(q)?)?;
    s.store.delete(Selection::Search(query)).await?;
    Ok("ok")
}

/// The body of PUT/DELETE /api/v1/messages.
#[derive(Deserialize, Default)]
struct Selected {
    #[serde(rename = "IDs", default)]
    ids: Vec<String>,
    #[serde(rename = "Read", default)]
    read: bool,
}

fn selected(body: &Bytes) -> ApiResult<Selected> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Selected::default());
    }
    let sel: Selected = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))?;
    if let Some(bad) = sel.ids.iter().find(|id| !id::is_valid(id)) {
        return Err(ApiError::bad(format!("malformed message ID {bad:?}")));
    }
    Ok(sel)
}

fn selection(ids: Vec<String>) -> Selection {
    if ids.is_empty() {
        Selection::All
    } else {
        Selection::Ids(ids)
    }
}

async fn set_read(State(s): State<AppState>, body: Bytes) -> ApiResult<&'static str> {
    let sel = selected(&body)?;
    s.store.set_read(selection(sel.ids), sel.read).await?;
    Ok("ok")
}

async fn delete_messages(State(s): State<AppState>, body: Bytes) -> ApiResult<&'static str> {
    let sel = selected(&body)?;
    s.store.delete(selection(sel.ids)).await?;
    Ok("ok")
}

async fn stored(s: &AppState, id: &str) -> ApiResult<crate::store::Stored> {
    if !id::is_valid(id) {
        return Err(ApiError::bad(format!("malformed message ID {id:?}")));
    }
    s.store.get(id).await?.ok_or_else(ApiError::not_found)
}

async fn message(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let m = stored(&s, &id).await?;
    // Mailpit marks a message read when it is fetched.
    s.store
        .set_read(Selection::Ids(vec![m.id.clone()]), true)
        .await?;
    let raw = m.raw.clone();
    let view = tokio::task::spawn_blocking(move || mime::view(&m))
        .await
        .map_err(|e| StoreError(e.to_string()))?;
    drop(raw);
    Ok(Json(view).into_response())
}

async fn headers(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let m = stored(&s, &id).await?;
    Ok(Json(mime::headers(&m.raw)).into_response())
}

async fn raw(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let m = stored(&s, &id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        m.raw,
    )
        .into_response())
}

async fn part(
    State(s): State<AppState>,
    Path((id, part_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let valid_part = !part_id.is_empty()
        && part_id.len() <= 64
        && part_id
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !valid_part {
        return Err(ApiError::bad(format!("malformed part ID {part_id:?}")));
    }
    let m = stored(&s, &id).await?;
    let data = mime::part(&m.raw, &part_id).ok_or_else(ApiError::not_found)?;
    let content_type = HeaderValue::from_str(&data.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let file_name: String = data
        .file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\""))
        .unwrap_or(HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // Even opened directly, an attached page runs nothing.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox; default-src 'none'"),
            ),
        ],
        data.data,
    )
        .into_response())
}

/// The policy for message HTML: no script, no plugin, no form, nothing
/// fetched from anywhere but inline styles and `data:`/`cid:`-rewritten
/// images; `sandbox` also makes the document an opaque origin.
pub const MESSAGE_CSP: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'; \
                               img-src data: 'self'; font-src data:; base-uri 'none'; form-action 'none'";

/// `/view/{ID}.html` and `/view/{ID}.txt`, as Mailpit.
async fn view(State(s): State<AppState>, Path(file): Path<String>) -> ApiResult<Response> {
    let (id, html) = match (file.strip_suffix(".html"), file.strip_suffix(".txt")) {
        (Some(id), _) => (id, true),
        (_, Some(id)) => (id, false),
        _ => return Err(ApiError::not_found()),
    };
    let m = stored(&s, id).await?;
    let message_id = m.id.clone();
    let v = tokio::task::spawn_blocking(move || mime::view(&m))
        .await
        .map_err(|e| StoreError(e.to_string()))?;
    if !html {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            v.text,
        )
            .into_response());
    }
    if v.html.is_empty() {
        return Err(ApiError::not_found());
    }
    // Inline images: cid: references point at the part download.
    let mut body = v.html;
    for part in &v.inline {
        if !part.content_id.is_empty() {
            body = body.replace(
                &format!("cid:{}", part.content_id),
                &format!("/api/v1/message/{message_id}/part/{}", part.part_id),
            );
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, MESSAGE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response())
}

async fn info(State(s): State<AppState>) -> Json<serde_json::Value> {
    let (total, unread) = s.store.stats();
    let size = std::fs::metadata(s.store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    Json(json!({
        "Version": concat!("smtpsrv-inbox ", env!("CARGO_PKG_VERSION")),
        "LatestVersion": "",
        "Database": s.store.path().display().to_string(),
        "DatabaseSize": size,
        "Messages": total,
        "Unread": unread,
        "Tags": {},
    }))
}

async fn webui() -> Json<serde_json::Value> {
    Json(json!({
        "Label": "",
        "MessageRelay": { "Enabled": false },
        "SpamAssassin": false,
        "ChaosEnabled": false,
        "DuplicatesIgnored": false,
    }))
}

/// Server-sent events: `ready` once subscribed, `new` with a message
/// summary, `changed` after deletes and read marks, `stats` with the
/// totals after any of them. Ends when the server shuts down.
async fn events(
    State(s): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.store.subscribe();
    let store = s.store.clone();
    let stream = futures_util::stream::unfold((rx, store), |(mut rx, store)| async move {
        let event = match rx.recv().await {
            Ok(Event::New(summary)) => SseEvent::default()
                .event("new")
                .json_data(&*summary)
                .unwrap_or_default(),
            // A change, or fell behind: the page reloads its list.
            Ok(Event::Changed) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                SseEvent::default().event("changed").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        let (total, unread) = store.stats();
        let stats = SseEvent::default()
            .event("stats")
            .data(json!({ "total": total, "unread": unread }).to_string());
        Some((
            futures_util::stream::iter([Ok(event), Ok(stats)]),
            (rx, store),
        ))
    })
    .flatten();
    // `ready` is sent once subscribed: a page that (re)loads its list when
    // it gets `ready` misses nothing committed before or after.
    let ready =
        futures_util::stream::once(async { Ok(SseEvent::default().event("ready").data("{}")) });
    let stream = ready.chain(stream);
    let shutdown = s.shutdown.clone();
    let stream = stream.take_until(async move { shutdown.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
