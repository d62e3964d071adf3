//! The management HTTP API and Prometheus metrics, served on the control
//! thread. Handlers only read what the workers publish (per-worker counters,
//! destination atomics, heartbeats) and sum it per request; nothing here
//! touches the data plane's hot path.

pub mod model;

mod dispatcher;
mod metrics;
mod registrations;
mod restart;
mod status;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::run::Running;
use model::ApiError;
pub use status::Rates;

/// What every handler sees.
pub struct ApiState {
    running: Arc<Running>,
    /// Bearer token the caller must present; `None` = open.
    token: Option<String>,
    /// Per-second rates, refreshed by [`sample_rates`].
    rates: Mutex<status::Sampler>,
}

impl ApiState {
    /// `token` empty means no authentication.
    pub fn new(running: Arc<Running>, token: &str) -> Arc<ApiState> {
        Arc::new(ApiState {
            running,
            token: (!token.is_empty()).then(|| token.to_owned()),
            rates: Mutex::new(status::Sampler::default()),
        })
    }

    fn rates(&self) -> Rates {
        self.rates.lock().map(|s| s.rates()).unwrap_or_default()
    }
}

/// True when every worker runs its loop (the `/health` verdict is "ok").
pub fn workers_healthy(workers: &[dataplane::worker::WorkerStats]) -> bool {
    !workers.is_empty() && workers.iter().all(status::alive)
}

/// Binds the API's TCP port now, so a taken port stops start-up with one line.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let fail = |e: std::io::Error| {
        anyhow!("cannot listen for the management API on {addr}: {e}; set [mgmt] listen or --mgmt")
    };
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    Ok(listener)
}

/// Serves the API until the runtime ends. Must run on the control thread's
/// runtime.
pub async fn serve(listener: std::net::TcpListener, state: Arc<ApiState>) {
    let addr = listener.local_addr().ok();
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "management API cannot use its socket");
            return;
        }
    };
    match addr {
        Some(a) if !a.ip().is_loopback() && state.token.is_none() => tracing::warn!(
            listen = %a,
            "management API listens beyond loopback without [mgmt] token: anyone who reaches it can change destination states"
        ),
        _ => {}
    }
    tracing::info!(listen = ?addr, auth = state.token.is_some(), "management API listening");
    tokio::spawn(sample_rates(Arc::clone(&state)));
    if let Err(e) = axum::serve(listener, router(state)).await {
        tracing::error!(error = %e, "management API stopped");
    }
}

/// The routes; public for tests that drive the router without a socket.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/health", get(status::health))
        .route("/status", get(status::status))
        .route("/dialogs", get(status::dialogs))
        .route("/errors/stats", get(status::errors))
        .route("/dispatcher", get(dispatcher::list))
        .route("/dispatcher/reload", post(dispatcher::reload))
        .route("/dispatcher/state", post(dispatcher::set_state))
        .route("/metrics", get(metrics::metrics))
        .route("/registrations", get(registrations::list))
        .route("/registrations/remove", post(registrations::remove))
        .route("/restart", post(restart::restart))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), auth))
        .with_state(state)
}

/// Refreshes the per-second rates from counter deltas once a second.
async fn sample_rates(state: Arc<ApiState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let total = status::totals(&state.running);
        if let Ok(mut s) = state.rates.lock() {
            s.sample(std::time::Instant::now(), &total);
        }
    }
}

/// Rejects requests without the configured bearer token.
async fn auth(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !presented.is_some_and(|p| same(p.as_bytes(), token.as_bytes())) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer …)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Comparison whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error reply.
fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (
        code,
        Json(ApiError {
            error: msg.into(),
            problems: Vec::new(),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
