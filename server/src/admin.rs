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
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use replica::Role;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// More metrics for `/metrics` (the ZEO face's counters, for instance), registered in the
/// registry of one scrape (prefix `standby`).
pub type ExtraMetrics = Arc<dyn Fn(&mut Registry) + Send + Sync>;

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

/// The status as `/status` returns it (JSON, derived: the field names are the API).
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    id: u32,
    role: &'static str,
    down_reason: Option<&'a str>,
    primary: Option<u32>,
    epoch: Option<u64>,
    promised_epoch: u64,
    last_tid: u64,
    newest_tid_known: u64,
    lag_transactions: u64,
    seconds_since_last_commit: Option<f64>,
    behind_seconds: Option<f64>,
    in_primary_component: bool,
    view: &'a [u32],
    voters: VotersJson,
    replica: ReplicaJson,
    gcs: GcsJson,
}

#[derive(serde::Serialize)]
struct Voter {
    id: u32,
    weight: u32,
}

#[derive(serde::Serialize)]
struct VotersJson {
    voters: Vec<Voter>,
    /// While a change is under way: the voters before it.
    old: Option<Vec<Voter>>,
    /// The tid that wrote them (0: the configuration file's).
    tid: u64,
    summary: String,
}

#[derive(serde::Serialize)]
struct ReplicaJson {
    applied: u64,
    acked: u64,
    elections: u64,
    fenced: u64,
    recovery_chunks: u64,
    recoveries_full: u64,
    recoveries_fast: u64,
    checkpoints: u64,
    lost: u64,
}

#[derive(serde::Serialize)]
struct GcsJson {
    views: u64,
    retransmits: u64,
    token_retransmits: u64,
    malformed: u64,
    ignored: u64,
    pauses: u64,
}

impl<'a> From<&'a ServerStatus> for StatusJson<'a> {
    fn from(st: &'a ServerStatus) -> StatusJson<'a> {
        let s = &st.staleness;
        let set = |v: &replica::VoterSet| -> Vec<Voter> {
            v.iter().map(|(id, weight)| Voter { id, weight }).collect()
        };
        StatusJson {
            id: st.id,
            role: role_name(s.role),
            down_reason: st.down_reason.as_deref(),
            primary: st.primary.map(|p| p.0),
            epoch: st.primary.map(|p| p.1 .0),
            promised_epoch: st.promised.0,
            last_tid: s.last_tid.0,
            newest_tid_known: s.primary_last_known.0,
            lag_transactions: s.primary_last_known.0.saturating_sub(s.last_tid.0),
            seconds_since_last_commit: st.since_last_commit.map(|d| d.as_secs_f64()),
            behind_seconds: s.behind_for.map(|d| d.as_secs_f64()),
            in_primary_component: s.in_primary_component,
            view: &st.view,
            voters: VotersJson {
                voters: set(&st.voters.0.voters),
                old: st.voters.0.old.as_ref().map(set),
                tid: st.voters.1 .0,
                summary: st.voters.0.to_string(),
            },
            replica: ReplicaJson {
                applied: st.stats.applied,
                acked: st.stats.acked,
                elections: st.stats.elections,
                fenced: st.stats.fenced,
                recovery_chunks: st.stats.recovery_chunks,
                recoveries_full: st.stats.recoveries_full,
                recoveries_fast: st.stats.recoveries_fast,
                checkpoints: st.stats.checkpoints,
                lost: st.stats.lost,
            },
            gcs: GcsJson {
                views: st.gcs.views,
                retransmits: st.gcs.retransmits,
                token_retransmits: st.gcs.token_retransmits,
                malformed: st.gcs.malformed,
                ignored: st.gcs.ignored,
                pauses: st.gcs.pauses,
            },
        }
    }
}

/// The status as JSON (what `/status` returns, without the key state).
pub fn status_json(st: &ServerStatus) -> serde_json::Value {
    serde_json::to_value(StatusJson::from(st)).unwrap_or(serde_json::Value::Null)
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

/// The server's label on every metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ServerLabel {
    server: u32,
}

fn gauge(reg: &mut Registry, label: &ServerLabel, name: &str, help: &str, v: u64) {
    let f = Family::<ServerLabel, Gauge>::default();
    f.get_or_create(label)
        .set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, f);
}

fn counter(reg: &mut Registry, label: &ServerLabel, name: &str, help: &str, v: u64) {
    let f = Family::<ServerLabel, Counter>::default();
    f.get_or_create(label).inc_by(v);
    reg.register(name, help, f);
}

/// The metrics of a status, registered in `reg` (names `standby_*`, labelled by server).
pub fn register_status(reg: &mut Registry, st: &ServerStatus) {
    let s = &st.staleness;
    let l = ServerLabel { server: st.id };
    let role = match s.role {
        Role::Primary => 0,
        Role::Backup => 1,
        Role::Syncing => 2,
        Role::ReadOnly => 3,
        Role::Down => 4,
    };
    let lag = s.primary_last_known.0.saturating_sub(s.last_tid.0);
    let epoch = st.primary.map(|p| p.1 .0).unwrap_or(0);
    gauge(
        reg,
        &l,
        "is_primary",
        "1 if this server is the working primary",
        (s.role == Role::Primary) as u64,
    );
    gauge(
        reg,
        &l,
        "role",
        "0 primary, 1 backup, 2 syncing, 3 read-only, 4 down",
        role,
    );
    gauge(reg, &l, "epoch", "Epoch of the working primary", epoch);
    gauge(
        reg,
        &l,
        "last_tid",
        "Last transaction in this store",
        s.last_tid.0,
    );
    gauge(
        reg,
        &l,
        "lag_transactions",
        "Transactions behind the newest one this server knows of",
        lag,
    );
    gauge(
        reg,
        &l,
        "view_members",
        "Servers in this server's current view",
        st.view.len() as u64,
    );
    gauge(
        reg,
        &l,
        "voters",
        "Servers with a vote (in the new set while a change is under way)",
        st.voters.0.voters.len() as u64,
    );
    gauge(
        reg,
        &l,
        "voter_change_under_way",
        "1 while the voters are a joint configuration",
        st.voters.0.is_joint() as u64,
    );
    counter(
        reg,
        &l,
        "commits_applied",
        "Transactions applied",
        st.stats.applied,
    );
    counter(
        reg,
        &l,
        "commits_acknowledged",
        "Commits acknowledged to clients as primary",
        st.stats.acked,
    );
    counter(
        reg,
        &l,
        "commit_delivered_microseconds",
        "Sum over sync commits answered here of the time from multicast to delivery back here",
        st.stats.stage_delivered_us,
    );
    counter(
        reg,
        &l,
        "commit_durable_microseconds",
        "Sum over the same commits of the time from delivery to durable on a majority",
        st.stats.stage_durable_us,
    );
    counter(
        reg,
        &l,
        "commit_stage_samples",
        "Sync commits the two stage sums cover",
        st.stats.stage_samples,
    );
    counter(
        reg,
        &l,
        "elections",
        "Elections completed",
        st.stats.elections,
    );
    counter(
        reg,
        &l,
        "fenced",
        "Messages refused (old epoch, not from the primary, malformed)",
        st.stats.fenced,
    );
    counter(
        reg,
        &l,
        "checkpoints",
        "Checkpoints asked for",
        st.stats.checkpoints,
    );
    counter(
        reg,
        &l,
        "lost_transactions",
        "Transactions moved to the lost archive",
        st.stats.lost,
    );
    counter(
        reg,
        &l,
        "view_changes",
        "Regular views installed by the gcs daemon",
        st.gcs.views,
    );
    counter(
        reg,
        &l,
        "retransmissions",
        "Packets retransmitted on request",
        st.gcs.retransmits,
    );
    counter(
        reg,
        &l,
        "tokens",
        "Tokens received (the ring's rotations, seen from this server)",
        st.gcs.tokens,
    );
    counter(
        reg,
        &l,
        "token_retransmissions",
        "Tokens re-sent after a silence",
        st.gcs.token_retransmits,
    );
    counter(
        reg,
        &l,
        "dropped_packets",
        "Datagrams dropped as malformed or foreign",
        st.gcs.malformed + st.gcs.ignored,
    );
    // Seconds this server may have been missing commits: infinite if it has not been current
    // since it started (a gauge that alerting compares with a bound).
    let behind = Family::<ServerLabel, Gauge<f64, AtomicU64>>::default();
    behind
        .get_or_create(&l)
        .set(s.behind_for.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    reg.register(
        "behind_seconds",
        "Seconds this server may have been missing commits (0: current)",
        behind,
    );
}

/// The exposition text (OpenMetrics) of a status and of what `extra` registers.
pub fn metrics_text(st: &ServerStatus, extra: Option<&ExtraMetrics>) -> String {
    let mut reg = Registry::with_prefix("standby");
    register_status(&mut reg, st);
    if let Some(f) = extra {
        f(&mut reg);
    }
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &reg) {
        Ok(()) => out,
        Err(_) => String::new(),
    }
}

async fn metrics(State(s): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    match s.server.status().await {
        Ok(st) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            metrics_text(&st, s.extra.as_ref()),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response(),
    }
}
