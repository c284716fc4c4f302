//! The HTTP admin endpoint: health probes by role (as Patroni's), status as JSON, Prometheus
//! metrics.
//!
//! | path | 200 when | use |
//! |---|---|---|
//! | `/health` | the server runs and its store works (else `down_reason` says why) | liveness probe |
//! | `/primary` | it is the working primary | readiness probe of a Service that selects the primary |
//! | `/replica` | it is a backup of a primary component, caught up | readiness probe of a read Service |
//! | `/status` | always (JSON) | operators, the CLI |
//! | `/metrics` | always (Prometheus text) | scraping |
//!
//! Otherwise 503, with the status JSON as body. When the cluster has client tokens, `/status`
//! and `/metrics` answer 401 without `Authorization: Bearer <admin token>`; the three probes
//! answer anyone (a probe says only a status code, and load balancers carry no token).

use crate::{ServerStatus, StorageServer};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use replica::Role;
use std::fmt::Write as _;
use std::sync::Arc;

/// More lines for `/metrics` (the ZEO face's counters, for instance).
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    server: Arc<StorageServer>,
    extra: Option<ExtraMetrics>,
    /// Tokens that open `/status` and `/metrics` (`None`: open to all).
    admin_tokens: Option<Arc<Vec<bytes::Bytes>>>,
}

/// Whether the request carries an admin token (or none is needed).
fn authorized(st: &AdminState, headers: &axum::http::HeaderMap) -> bool {
    let Some(tokens) = &st.admin_tokens else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let granted: Vec<(crate::front::Access, bytes::Bytes)> = tokens
        .iter()
        .map(|t| (crate::front::Access::Admin, t.clone()))
        .collect();
    crate::front::access_of(&granted, given.trim().as_bytes()).is_some()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "an admin token is needed (Authorization: Bearer TOKEN)\n",
    )
        .into_response()
}

impl axum::extract::FromRef<AdminState> for Arc<StorageServer> {
    fn from_ref(s: &AdminState) -> Arc<StorageServer> {
        s.server.clone()
    }
}

/// Serves the admin endpoint on `listener` until the server stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<StorageServer>,
) -> std::io::Result<()> {
    serve_with(listener, server, None, None).await
}

/// [`serve`], with `extra` lines appended to `/metrics`, and `/status` and `/metrics` only for
/// requests bearing one of `admin_tokens` (`None`: open).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    server: Arc<StorageServer>,
    extra: Option<ExtraMetrics>,
    admin_tokens: Option<Vec<bytes::Bytes>>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/primary", get(primary))
        .route("/replica", get(replica_probe))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            server,
            extra,
            admin_tokens: admin_tokens.map(Arc::new),
        });
    axum::serve(listener, app).await
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Backup => "backup",
        Role::Syncing => "syncing",
        Role::ReadOnly => "read-only",
        Role::Down => "down",
    }
}

/// The status as JSON (what `/status` returns).
pub fn status_json(st: &ServerStatus) -> serde_json::Value {
    let s = &st.staleness;
    serde_json::json!({
        "id": st.id,
        "role": role_name(s.role),
        "down_reason": st.down_reason,
        "primary": st.primary.map(|p| p.0),
        "epoch": st.primary.map(|p| p.1 .0),
        "promised_epoch": st.promised.0,
        "last_tid": s.last_tid.0,
        "newest_tid_known": s.primary_last_known.0,
        "lag_transactions": s.primary_last_known.0.saturating_sub(s.last_tid.0),
        "seconds_since_last_commit": st.since_last_commit.map(|d| d.as_secs_f64()),
        "behind_seconds": s.behind_for.map(|d| d.as_secs_f64()),
        "in_primary_component": s.in_primary_component,
        "view": st.view,
        "voters": {
            "voters": st.voters.0.voters.iter().map(|(id, w)| serde_json::json!({"id": id, "weight": w})).collect::<Vec<_>>(),
            "old": st.voters.0.old.as_ref().map(|o| o.iter().map(|(id, w)| serde_json::json!({"id": id, "weight": w})).collect::<Vec<_>>()),
            "tid": st.voters.1 .0,
            "summary": st.voters.0.to_string(),
        },
        "replica": {
            "applied": st.stats.applied,
            "acked": st.stats.acked,
            "elections": st.stats.elections,
            "fenced": st.stats.fenced,
            "recovery_chunks": st.stats.recovery_chunks,
            "recoveries_full": st.stats.recoveries_full,
            "recoveries_fast": st.stats.recoveries_fast,
            "checkpoints": st.stats.checkpoints,
            "lost": st.stats.lost,
        },
        "gcs": {
            "views": st.gcs.views,
            "retransmits": st.gcs.retransmits,
            "token_retransmits": st.gcs.token_retransmits,
            "malformed": st.gcs.malformed,
            "ignored": st.gcs.ignored,
            "pauses": st.gcs.pauses,
        },
    })
}

async fn with_status(server: &StorageServer, ok: impl Fn(&ServerStatus) -> bool) -> Response {
    match server.status().await {
        Ok(st) => {
            let code = if ok(&st) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                code,
                [(header::CONTENT_TYPE, "application/json")],
                status_json(&st).to_string(),
            )
                .into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response(),
    }
}

async fn health(State(s): State<Arc<StorageServer>>) -> Response {
    with_status(&s, |st| st.staleness.role != Role::Down).await
}

async fn primary(State(s): State<Arc<StorageServer>>) -> Response {
    with_status(&s, |st| st.staleness.role == Role::Primary).await
}

async fn replica_probe(State(s): State<Arc<StorageServer>>) -> Response {
    with_status(&s, |st| st.staleness.role == Role::Backup).await
}

async fn status(State(st): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let s = st.server;
    let keys = s.key_status().await.ok().flatten();
    match s.status().await {
        Ok(st) => {
            let mut v = status_json(&st);
            v["keys"] = match keys {
                Some(k) => serde_json::json!({
                    "send": k.send,
                    "held": k.held,
                    "retired": k.retired,
                    "peers": k.peers.iter().map(|(n, held, send)| serde_json::json!({
                        "server": n, "held": held, "send": send,
                    })).collect::<Vec<_>>(),
                }),
                None => serde_json::Value::Null,
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                v.to_string(),
            )
                .into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response(),
    }
}

/// The Prometheus exposition text of a status.
pub fn metrics_text(st: &ServerStatus) -> String {
    let s = &st.staleness;
    let mut o = String::new();
    let mut m = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP standby_{name} {help}\n# TYPE standby_{name} {kind}\nstandby_{name}{{server=\"{}\"}} {v}", st.id);
    };
    m(
        "is_primary",
        "gauge",
        "1 if this server is the working primary.",
        (s.role == Role::Primary) as u64,
    );
    m(
        "role",
        "gauge",
        "0 primary, 1 backup, 2 syncing, 3 read-only, 4 down.",
        match s.role {
            Role::Primary => 0,
            Role::Backup => 1,
            Role::Syncing => 2,
            Role::ReadOnly => 3,
            Role::Down => 4,
        },
    );
    m(
        "epoch",
        "gauge",
        "Epoch of the working primary.",
        st.primary.map(|p| p.1 .0).unwrap_or(0),
    );
    m(
        "last_tid",
        "gauge",
        "Last transaction in this store.",
        s.last_tid.0,
    );
    m(
        "lag_transactions",
        "gauge",
        "Transactions behind the newest one this server knows of.",
        s.primary_last_known.0.saturating_sub(s.last_tid.0),
    );
    m(
        "view_members",
        "gauge",
        "Servers in this server's current view.",
        st.view.len() as u64,
    );
    m(
        "commits_applied_total",
        "counter",
        "Transactions applied.",
        st.stats.applied,
    );
    m(
        "commits_acknowledged_total",
        "counter",
        "Commits acknowledged to clients as primary.",
        st.stats.acked,
    );
    m(
        "commit_delivered_microseconds_total",
        "counter",
        "Sum over sync commits answered here of the time from multicast to delivery back here.",
        st.stats.stage_delivered_us,
    );
    m(
        "commit_durable_microseconds_total",
        "counter",
        "Sum over the same commits of the time from delivery to durable on a majority.",
        st.stats.stage_durable_us,
    );
    m(
        "commit_stage_samples_total",
        "counter",
        "Sync commits the two stage sums cover.",
        st.stats.stage_samples,
    );
    m(
        "elections_total",
        "counter",
        "Elections completed.",
        st.stats.elections,
    );
    m(
        "fenced_total",
        "counter",
        "Messages refused (old epoch, not from the primary, malformed).",
        st.stats.fenced,
    );
    m(
        "checkpoints_total",
        "counter",
        "Checkpoints asked for.",
        st.stats.checkpoints,
    );
    m(
        "lost_transactions_total",
        "counter",
        "Transactions moved to the lost archive.",
        st.stats.lost,
    );
    m(
        "view_changes_total",
        "counter",
        "Regular views installed by the gcs daemon.",
        st.gcs.views,
    );
    m(
        "retransmissions_total",
        "counter",
        "Packets retransmitted on request.",
        st.gcs.retransmits,
    );
    m(
        "tokens_total",
        "counter",
        "Tokens received (the ring's rotations, seen from this server).",
        st.gcs.tokens,
    );
    m(
        "token_retransmissions_total",
        "counter",
        "Tokens re-sent after a silence.",
        st.gcs.token_retransmits,
    );
    m(
        "dropped_packets_total",
        "counter",
        "Datagrams dropped as malformed or foreign.",
        st.gcs.malformed + st.gcs.ignored,
    );
    // Seconds this server may have been missing commits: +Inf if it has not been current
    // since it started (a gauge that alerting compares with a bound).
    let behind = s
        .behind_for
        .map_or("+Inf".to_string(), |d| format!("{}", d.as_secs_f64()));
    let _ = writeln!(
        o,
        "# HELP standby_behind_seconds Seconds this server may have been missing commits (0: current).\n# TYPE standby_behind_seconds gauge\nstandby_behind_seconds{{server=\"{}\"}} {behind}",
        st.id
    );
    o
}

async fn metrics(State(s): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    match s.server.status().await {
        Ok(st) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics_text(&st) + &s.extra.as_ref().map(|f| f()).unwrap_or_default(),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response(),
    }
}
