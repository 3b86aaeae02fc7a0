//! `POST /agents/readings`: an agent's report of the tasks on its node.
//!
//! An agent's body is input from outside like any other: a body that is not a report is a
//! 400, readings of services the registry does not track a 422 (with the services it does
//! track, so the agent corrects itself at once), a missing or wrong token a 401 (checked by
//! the handler before this). Every refusal is counted by reason; none stops the server.
//! An accepted report replaces the node's entry on the board of node readings, and the
//! answer names the services the registry wants measured.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;

use super::body::ApiBody;
use super::ApiState;
use crate::docker::readings::{validate, NodeReport, Rejection, ReportAnswer};

/// The largest report taken: about 8,000 task readings. Reports replace a node's entry whole,
/// so they cannot be split, and MAX_BODY_BYTES (sized for commands) would be too small.
pub const MAX_REPORT_BYTES: usize = 2 * 1024 * 1024;

/// Take one report; its body must arrive within `read_timeout`.
pub async fn receive<B>(state: &ApiState, body: B, read_timeout: Duration) -> Response<ApiBody>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let board = &state.source_counters.nodes;
    let limit = MAX_REPORT_BYTES;
    let bytes = match tokio::time::timeout(read_timeout, Limited::new(body, limit).collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            board.reject(Rejection::Malformed);
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                &Refusal::plain(format!("report too large (limit {MAX_REPORT_BYTES} bytes)")),
            );
        }
        Ok(Err(error)) => {
            board.reject(Rejection::Malformed);
            return answer(
                StatusCode::BAD_REQUEST,
                &Refusal::plain(format!("could not read the report: {error}")),
            );
        }
        Err(_) => {
            board.reject(Rejection::Malformed);
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                &Refusal::plain(format!(
                    "report not received within {} s",
                    read_timeout.as_secs()
                )),
            );
        }
    };
    let report: NodeReport = match serde_json::from_slice(&bytes) {
        Ok(report) => report,
        Err(e) => {
            board.reject(Rejection::Malformed);
            return answer(
                StatusCode::BAD_REQUEST,
                &Refusal::plain(format!("not a node report: {e}")),
            );
        }
    };
    let registered: HashSet<String> = state
        .registry
        .load()
        .ids
        .keys()
        .map(|id| id.to_string())
        .collect();
    let wanted = |node: &str| -> Vec<String> {
        // The registry samples its own node itself: an agent there has nothing to do.
        if board.is_in_process(node) {
            return Vec::new();
        }
        let mut ids: Vec<String> = registered.iter().cloned().collect();
        ids.sort();
        ids
    };
    match validate(&report, &registered) {
        Ok(()) => {
            let services = wanted(&report.node_id);
            if !board.is_in_process(&report.node_id) {
                board.record(report, false);
            }
            board
                .reports_accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            answer(StatusCode::OK, &ReportAnswer { services })
        }
        Err((why, message)) => {
            board.reject(why);
            let status = match why {
                Rejection::UnknownTask => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            answer(
                status,
                &Refusal {
                    error: message,
                    services: Some(wanted(&report.node_id)),
                },
            )
        }
    }
}

/// A refusal's body: the contract's `error`, and for a report naming unknown services the
/// services the registry does track.
#[derive(Serialize)]
struct Refusal {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<Vec<String>>,
}

impl Refusal {
    fn plain(error: String) -> Self {
        Refusal {
            error,
            services: None,
        }
    }
}

fn answer(status: StatusCode, body: &impl Serialize) -> Response<ApiBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(ApiBody::full(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
