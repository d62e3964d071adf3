//! A blocking HTTP client for the management API, with one-line errors.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::model::ApiError;

/// Talks to one sipvane.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A reply that arrived, whatever its status.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as `T`, or a one-line error naming the endpoint.
    pub fn decode<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        serde_json::from_str(&self.body).map_err(|e| format!("unexpected reply from {path}: {e}"))
    }

    /// The body re-indented, for `--json`.
    pub fn pretty(&self) -> String {
        match serde_json::from_str::<Value>(&self.body) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| self.body.clone()),
            Err(_) => self.body.clone(),
        }
    }

    /// The API's error message for a failed request.
    pub fn error(&self, path: &str) -> String {
        let detail = match serde_json::from_str::<ApiError>(&self.body) {
            Ok(e) if e.problems.is_empty() => e.error,
            Ok(e) => format!("{}: {}", e.error, e.problems.join("; ")),
            Err(_) => self.body.trim().to_owned(),
        };
        let hint = if self.status == 401 {
            " (pass --token or set SIPVANE_MGMT_TOKEN)"
        } else {
            ""
        };
        format!("{path}: HTTP {}: {detail}{hint}", self.status)
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            // A reload from a database may take a while; nothing else does.
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Client {
            base: format!("http://{addr}"),
            token: token.filter(|t| !t.is_empty()),
            agent,
        }
    }

    pub fn get(&self, path: &str) -> Result<Reply, String> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.finish(path, req.call())
    }

    pub fn post<B: Serialize>(&self, path: &str, body: Option<&B>) -> Result<Reply, String> {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        self.finish(path, sent)
    }

    /// GET that must succeed and decode.
    pub fn fetch<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let r = self.get(path)?;
        if !r.ok() {
            return Err(r.error(path));
        }
        r.decode(path)
    }

    fn finish(
        &self,
        path: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Reply, String> {
        let mut resp = sent.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{path}: cannot read the reply: {e}"))?;
        Ok(Reply { status, body })
    }

    fn unreachable(&self, e: &ureq::Error) -> String {
        let why = match e {
            ureq::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        format!(
            "cannot reach sipvane's management API at {}: {why} (is sipvane running? see --mgmt)",
            self.base
        )
    }
}
