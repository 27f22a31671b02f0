//! The local HTTP front door (`model-router serve`): axum accepts connections,
//! enforces the body limit, and hands every request to [`crate::http::handle`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use tokio::net::TcpListener;

use crate::error::{Error, RequestError};
use crate::http::{RequestId, error_response, handle};
use crate::service::ModelService;

#[derive(Clone)]
struct ServerState {
    service: ModelService,
    max_body: usize,
    trust_identity_headers: bool,
}

/// How the server treats callers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Take the caller's identity from the `x-caller-*` headers (see [`crate::identity`]).
    pub trust_identity_headers: bool,
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Serves HTTP on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve(
    listener: TcpListener,
    service: ModelService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, service, ServeOptions::default(), shutdown).await
}

/// [`serve`], with options.
pub async fn serve_with(
    listener: TcpListener,
    service: ModelService,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if options.trust_identity_headers {
        tracing::warn!(
            "trusted-header mode: the x-caller-arn and x-caller-claims headers are believed as the caller's identity; \
             only run this behind a proxy that authenticates callers and sets those headers itself"
        );
    }
    let max_body = service.config().max_request_bytes;
    let app = axum::Router::new()
        .fallback(front_door)
        // The router enforces the limit itself (with our JSON 413), so axum's own
        // default limit is lifted.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(ServerState {
            service,
            max_body,
            trust_identity_headers: options.trust_identity_headers,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn front_door(State(state): State<ServerState>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let too_large = |size: usize| {
        to_axum(error_response(&Error::Request(
            RequestError::PayloadTooLarge {
                size,
                limit: state.max_body,
            },
        )))
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|size| *size > state.max_body) {
        return too_large(size);
    }
    let bytes: Bytes = match axum::body::to_bytes(body, state.max_body).await {
        Ok(bytes) => bytes,
        // Chunked bodies have no declared size; past the limit is all we know.
        Err(_) => return too_large(state.max_body + 1),
    };
    let id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("local-{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)));
    parts.extensions.insert(RequestId(id));
    if state.trust_identity_headers {
        parts.extensions.insert(crate::identity::TrustedHeaders);
    }
    to_axum(handle(&state.service, http::Request::from_parts(parts, bytes)).await)
}

fn to_axum(response: http::Response<Bytes>) -> Response {
    response.map(Body::from)
}
