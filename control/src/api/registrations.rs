//! `/registrations`: the registrar's location table (as `kamctl ul show`)
//! and removing a user's bindings (`kamctl ul rm`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dataplane::registrar::{Op, Registrar, Update};

use super::model::{
    BindingView, Registration, Registrations, RemoveRegistration, RemovedRegistration,
};
use super::{error, ApiState};

/// The live bindings, users sorted; only `aor` when given.
pub(crate) fn view(reg: &Registrar, aor: Option<&str>, now: Instant) -> Registrations {
    let now_unix = reg.config.unix(now);
    let all = match aor {
        Some(a) => reg
            .location
            .lookup(a)
            .map(|b| vec![(Box::<str>::from(a), b)])
            .unwrap_or_default(),
        None => reg.location.all(),
    };
    let mut users: Vec<Registration> = all
        .into_iter()
        .map(|(aor, list)| Registration {
            aor: aor.to_string(),
            bindings: list
                .iter()
                .filter(|b| b.expires > now_unix)
                .map(|b| BindingView {
                    contact: b.contact.to_string(),
                    received: b.received.map(|a| a.to_string()),
                    expires_in: b.expires - now_unix,
                    q: f64::from(b.q) / 1000.0,
                    call_id: b.call_id.to_string(),
                    cseq: b.cseq,
                    user_agent: b.user_agent.to_string(),
                    ruid: b.ruid.to_string(),
                })
                .collect(),
        })
        .filter(|r| !r.bindings.is_empty())
        .collect();
    users.sort_by(|a, b| a.aor.cmp(&b.aor));
    Registrations {
        aors: users.len() as u64,
        bindings: users.iter().map(|u| u.bindings.len() as u64).sum(),
        users,
    }
}

fn off() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "the registrar is off ([registrar] db_url is empty)",
    )
}

#[derive(serde::Deserialize)]
pub(super) struct AorQuery {
    aor: Option<String>,
}

pub(super) async fn list(State(st): State<Arc<ApiState>>, Query(q): Query<AorQuery>) -> Response {
    match &st.running.proxy.registrar {
        Some(reg) => Json(view(reg, q.aor.as_deref(), Instant::now())).into_response(),
        None => off(),
    }
}

/// Removes every binding of one user, through the control thread's queue
/// like a `Contact: *` unREGISTER (so `location` follows within `write_back_ms`).
pub(super) async fn remove(State(st): State<Arc<ApiState>>, body: Bytes) -> Response {
    let Some(reg) = &st.running.proxy.registrar else {
        return off();
    };
    let req: RemoveRegistration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"aor\": \"user@domain\"}}: {e}"),
            )
        }
    };
    let removed = view(reg, Some(&req.aor), Instant::now()).bindings;
    let update = Update {
        aor: req.aor.as_str().into(),
        op: Op::Clear,
    };
    if !reg.submit(vec![update]) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the registrar's queue is full; try again",
        );
    }
    Json(RemovedRegistration {
        aor: req.aor,
        removed,
    })
    .into_response()
}
