//! `POST /restart`: a restart without dropped calls. The running process
//! starts the binary it was started from (after a package upgrade, the new
//! one) with the same arguments; that process takes over through
//! `[mgmt] handover_socket` (crate::handover). The reply says which process
//! serves from now on, or why the new one did not take over.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::model::RestartReply;
use super::{error, ApiState};

/// How long the new process may take to start and take over.
const TAKE_OVER_WITHIN: Duration = Duration::from_secs(30);

pub(super) async fn restart(State(st): State<Arc<ApiState>>) -> Response {
    let r = &st.running.restart;
    if !r.enabled() {
        return error(
            StatusCode::CONFLICT,
            "restarts need [mgmt] handover_socket (it is \"\")",
        );
    }
    if r.busy.swap(true, Ordering::AcqRel) {
        return error(StatusCode::CONFLICT, "a restart is already under way");
    }
    let mut child = match r.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.busy.store(false, Ordering::Release);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the new process: {e}"),
            );
        }
    };
    let new_pid = child.id();
    tracing::info!(pid = new_pid, "restart: started the new process");
    let deadline = Instant::now() + TAKE_OVER_WITHIN;
    loop {
        if r.handed_to.load(Ordering::Relaxed) == new_pid {
            // The new process is not waited for: it outlives this one.
            return Json(RestartReply {
                old_pid: std::process::id(),
                new_pid,
            })
            .into_response();
        }
        if let Ok(Some(status)) = child.try_wait() {
            r.busy.store(false, Ordering::Release);
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the new process (pid {new_pid}) exited ({status}) without taking over; its log says why"),
            );
        }
        if Instant::now() >= deadline {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the new process (pid {new_pid}) did not take over within {TAKE_OVER_WITHIN:?}"
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
