//! `/dispatcher`: the destination table as the workers see it, reloads, and
//! administrative state changes (as `kamcmd dispatcher.set_state`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dataplane::dispatch::{DestState, Table};

use super::model::{
    ApiError, DestView, Dispatcher, SetStateReply, SetStateRequest, SetView, StateChange,
};
use super::{error, ApiState};

/// The table with every destination's live state.
pub(crate) fn view(table: &Table, now: Instant) -> Dispatcher {
    Dispatcher {
        sets: table
            .sets()
            .iter()
            .map(|set| SetView {
                id: set.id,
                destinations: set
                    .dests()
                    .iter()
                    .map(|d| {
                        let s = d.stats.snapshot(now);
                        DestView {
                            uri: d.uri.clone(),
                            address: d.addr.to_string(),
                            state: s.state.as_str().into(),
                            usable: s.usable,
                            flags: d.flags,
                            priority: d.priority,
                            attrs: d.attrs_raw.clone(),
                            weight: d.attrs.weight,
                            rweight: d.attrs.rweight,
                            maxload: d.attrs.maxload,
                            duid: d.attrs.duid.clone(),
                            description: d.description.clone(),
                            active_calls: s.active_calls,
                            selected: s.selected,
                            failed: s.failed,
                            consecutive_failures: s.consecutive_failures,
                            latency_us: s.latency_us,
                            retry_in_ms: s.inactive_until.map(|t| {
                                u64::try_from(t.saturating_duration_since(now).as_millis())
                                    .unwrap_or(u64::MAX)
                            }),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(super) async fn list(State(st): State<Arc<ApiState>>) -> Json<Dispatcher> {
    Json(view(&st.running.table.load(), Instant::now()))
}

pub(super) async fn reload(State(st): State<Arc<ApiState>>) -> Response {
    match st.running.reload.reload().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            // The reloader answers this way only when the control thread is
            // going away; anything else is a problem with the source.
            let code = if e == "sipvane is shutting down" {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let problems: Vec<String> = e.lines().map(str::to_owned).collect();
            let error = if problems.len() > 1 {
                format!(
                    "reload failed with {} problems; the table in service is unchanged",
                    problems.len()
                )
            } else {
                format!("reload failed: {e}; the table in service is unchanged")
            };
            let problems = if problems.len() > 1 {
                problems
            } else {
                Vec::new()
            };
            (code, Json(ApiError { error, problems })).into_response()
        }
    }
}

pub(super) async fn set_state(State(st): State<Arc<ApiState>>, body: Bytes) -> Response {
    let req: SetStateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body must be JSON {{\"set\": ID, \"uri\": \"sip:…\", \"state\": \"active|inactive|disabled|probing\"}}: {e}"
                ),
            )
        }
    };
    let state: DestState = match req.state.parse() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let table = st.running.table.load();
    let mut changed = Vec::new();
    for (_, d) in table.iter() {
        if d.uri != req.uri || req.set.is_some_and(|s| s != d.set) {
            continue;
        }
        let previous = d.stats.state();
        d.stats.set_state(state);
        tracing::info!(set = d.set, uri = %d.uri, from = %previous, to = %state, "destination state set through the management API");
        changed.push(StateChange {
            set: d.set,
            uri: d.uri.clone(),
            previous: previous.as_str().into(),
            state: state.as_str().into(),
        });
    }
    if changed.is_empty() {
        let where_ = match req.set {
            Some(s) => format!("in set {s}"),
            None => "in any set".into(),
        };
        return error(
            StatusCode::NOT_FOUND,
            format!("no destination {} {where_}", req.uri),
        );
    }
    Json(SetStateReply { changed }).into_response()
}
