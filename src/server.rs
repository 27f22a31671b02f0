//! The local HTTP front door (`model-router serve`): axum accepts connections,
//! enforces the body limit, and hands every request to [`crate::http::handle`].
//! tower-http's layers ([`hygiene`]) add request ids, CORS and compression
//! around it; [`serve_grpc`] serves the gRPC front door ([`crate::grpc`]) on
//! a listener of its own.

use std::future::Future;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use tokio::net::TcpListener;

use crate::error::{Error, RequestError};
use crate::http::{Compressible, RequestId, error_response, handle};
use crate::service::ModelService;

#[derive(Clone)]
struct ServerState {
    service: ModelService,
    max_body: usize,
    trust_identity_headers: bool,
}

/// How the server treats callers.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Take the caller's identity from the `x-caller-*` headers (see [`crate::identity`]).
    pub trust_identity_headers: bool,
    /// Origins browsers may call from (CORS); empty: no CORS headers at all,
    /// and `OPTIONS` is a 405 like any other method a route does not take.
    /// `*` allows any origin.
    pub cors_origins: Vec<String>,
}

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
    let cors_origins = options.cors_origins.clone();
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
    let app = hygiene(app, &cors_origins).map_err(std::io::Error::other)?;
    axum::serve(listener, axum::ServiceExt::into_make_service(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The HTTP details clients rely on, from tower-http, in one place (outermost
/// first): an `x-request-id` on every request (a UUID when the caller sent
/// none) echoed on its response; CORS when origins are configured; gzip
/// inference answers when `Accept-Encoding` asks for them (only those: see
/// [`Compressible`]); gzip and deflate request
/// bodies (`Content-Encoding`) decompressed before the router sees them, so
/// the body limit applies to the decompressed size (another encoding: 415).
fn hygiene(
    app: axum::Router,
    cors_origins: &[String],
) -> Result<
    impl tower::Service<
        Request,
        Response = Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    String,
> {
    use tower::ServiceBuilder;
    use tower_http::compression::predicate::{DefaultPredicate, Predicate as _};
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let request_id = http::HeaderName::from_static(REQUEST_ID);
    let cors = cors_layer(cors_origins)?;
    Ok(ServiceBuilder::new()
        .map_response(|response: http::Response<_>| response.map(Body::new))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(request_id))
        .option_layer(cors)
        .layer(
            tower_http::compression::CompressionLayer::new().compress_when(
                DefaultPredicate::new().and(
                    |_: http::StatusCode,
                     _: http::Version,
                     _: &http::HeaderMap,
                     extensions: &http::Extensions| {
                        extensions.get::<Compressible>().is_some()
                    },
                ),
            ),
        )
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .service(app))
}

/// The request id header, set (and echoed) on every HTTP request and gRPC call.
pub const REQUEST_ID: &str = "x-request-id";

/// A new request id, for a request that came without one.
pub fn new_request_id() -> String {
    use tower_http::request_id::MakeRequestId as _;
    tower_http::request_id::MakeRequestUuid
        .make_request_id(&http::Request::new(()))
        .and_then(|id| id.header_value().to_str().ok().map(str::to_string))
        .unwrap_or_default()
}

/// The CORS layer for `origins` (none when empty): the V2 routes' methods,
/// the headers tritonclient and browsers send, and the binary-data header
/// exposed so a browser can split a binary response.
fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, String> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                http::HeaderValue::from_str(o)
                    .map_err(|_| format!("CORS origin {o:?} is not a valid header value"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let header = http::HeaderName::from_static;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([http::Method::GET, http::Method::POST, http::Method::HEAD])
            .allow_headers([
                http::header::CONTENT_TYPE,
                http::header::CONTENT_ENCODING,
                http::header::ACCEPT_ENCODING,
                http::header::AUTHORIZATION,
                header("inference-header-content-length"),
                header(REQUEST_ID),
            ])
            .expose_headers([
                header("inference-header-content-length"),
                header(REQUEST_ID),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

/// Serves the gRPC front door (`inference.GRPCInferenceService`) on
/// `listener` until `shutdown` resolves, then finishes the calls in flight.
pub async fn serve_grpc(
    listener: TcpListener,
    service: ModelService,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let door = crate::grpc::GrpcFrontDoor::new(service, options.trust_identity_headers);
    tonic::transport::Server::builder()
        .add_service(door.into_server())
        // No Nagle: an answer goes out at once rather than after the
        // client's delayed ACK (perf_analyzer measured 8 ms a call with it).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(std::io::Error::other)
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
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    parts.extensions.insert(RequestId(id));
    if state.trust_identity_headers {
        parts.extensions.insert(crate::identity::TrustedHeaders);
    }
    to_axum(handle(&state.service, http::Request::from_parts(parts, bytes)).await)
}

fn to_axum(response: http::Response<Bytes>) -> Response {
    response.map(Body::from)
}
