//! The local HTTP front door (`model-router serve`): its own accept loop over
//! hyper, so that slow and idle clients are bounded (a header read timeout, a
//! body read timeout, an idle keep-alive timeout and a connection limit; see
//! [`ServeOptions`]); it enforces the body limit and hands every request to
//! [`crate::http::handle`]. tower-http's layers ([`hygiene`]) add request
//! ids, CORS and compression around it; [`serve_grpc`] serves the gRPC front
//! door ([`crate::grpc`]) on a listener of its own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::error::{Error, RequestError};
use crate::http::{Compressible, RequestId, error_response, handle};
use crate::service::ModelService;

#[derive(Clone)]
struct ServerState {
    service: ModelService,
    max_body: usize,
    trust_identity_headers: bool,
    body_read_timeout: Duration,
}

/// How the server treats callers. Each bound has its flag and environment
/// twin on `serve` (README, "Slow and idle clients").
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Take the caller's identity from the `x-caller-*` headers (see [`crate::identity`]).
    pub trust_identity_headers: bool,
    /// A request's headers must arrive whole within this time of their first
    /// byte, or the connection is closed (a connection that sends nothing is
    /// the idle timeout's).
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this time of its headers,
    /// or it is answered 408 `request_timeout` and the connection closed.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once. At the limit, a new connection first
    /// closes the connection idle the longest; when none is idle, it waits
    /// (in accept order) for one to end.
    pub max_connections: usize,
    /// Origins browsers may call from (CORS); empty: no CORS headers at all,
    /// and `OPTIONS` is a 405 like any other method a route does not take.
    /// `*` allows any origin.
    pub cors_origins: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            trust_identity_headers: false,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            cors_origins: Vec::new(),
        }
    }
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

/// One connection, as the accept loop sees it. Times are ms since the server
/// started, plus one (0 means "not set").
struct Connection {
    /// Requests being answered on it now.
    in_flight: AtomicUsize,
    /// When its last request ended (or it opened).
    idle_since_ms: AtomicU64,
    /// When the first byte of a request not yet handed to the router came
    /// (0: none pending); the header read timeout counts from here.
    headers_since_ms: AtomicU64,
    /// Asks its task to close it once the request in flight (if any) is answered.
    close: Notify,
}

/// The open connections. A std Mutex: held only to insert, remove, or pick
/// the longest-idle entry, never across an await.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the connection idle the longest to close; false if none is idle.
    fn close_longest_idle(&self) -> bool {
        let open = self.lock();
        let idle = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire));
        match idle {
            Some(connection) => {
                connection.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn close_all(&self) {
        for connection in self.lock().values() {
            connection.close.notify_one();
        }
    }
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
    let state = ServerState {
        max_body: service.config().max_request_bytes,
        service,
        trust_identity_headers: options.trust_identity_headers,
        body_read_timeout: options.body_read_timeout,
    };
    let door =
        axum::Router::new().fallback(move |request: Request| front_door(state.clone(), request));
    let app = hygiene(door, &options.cors_origins).map_err(std::io::Error::other)?;
    let max_connections = options.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let connections = Arc::new(Connections::default());
    let started = Instant::now();
    // hyper's own header timeout starts as soon as a connection waits for a
    // request, which would close idle keep-alive connections after it; ours
    // counts from a request's first byte (see `Watched`).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection reset before it
                // was accepted: wait a moment rather than spin.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                connections.close_longest_idle();
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        next_id += 1;
        let id = next_id;
        let connection = Arc::new(Connection {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(ms_since(started)),
            headers_since_ms: AtomicU64::new(0),
            close: Notify::new(),
        });
        connections.lock().insert(id, connection.clone());
        let app = app.clone();
        let builder = builder.clone();
        let connections = connections.clone();
        let idle_timeout = options.idle_timeout;
        let header_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let tracked = connection.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let tracked = tracked.clone();
                    tracked.in_flight.fetch_add(1, Ordering::AcqRel);
                    // Its headers are in: no longer under the header timeout.
                    tracked.headers_since_ms.store(0, Ordering::Release);
                    async move {
                        let response =
                            match tower::ServiceExt::oneshot(app, request.map(Body::new)).await {
                                Ok(response) => response,
                                Err(never) => match never {},
                            };
                        tracked
                            .idle_since_ms
                            .store(ms_since(started), Ordering::Release);
                        tracked.in_flight.fetch_sub(1, Ordering::AcqRel);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let watched = Watched {
                inner: stream,
                connection: connection.clone(),
                started,
            };
            let served = builder.serve_connection(TokioIo::new(watched), service);
            tokio::pin!(served);
            let tick = (idle_timeout.min(header_timeout) / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            let mut closing = false;
            loop {
                tokio::select! {
                    result = served.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    () = connection.close.notified(), if !closing => {
                        closing = true;
                        served.as_mut().graceful_shutdown();
                    }
                    () = tokio::time::sleep(tick) => {
                        let now = ms_since(started);
                        let headers_since = connection.headers_since_ms.load(Ordering::Acquire);
                        if headers_since != 0 && now >= headers_since + header_timeout.as_millis() as u64 {
                            // Half-sent headers: no answer is owed; drop the connection.
                            tracing::debug!("request headers did not arrive in time; closing the connection");
                            break;
                        }
                        let idle = connection.in_flight.load(Ordering::Acquire) == 0
                            && now >= connection.idle_since_ms.load(Ordering::Acquire)
                                + idle_timeout.as_millis() as u64;
                        if idle && !closing {
                            closing = true;
                            served.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            connections.lock().remove(&id);
            drop(permit);
        });
    }
    // Finish what is in flight: idle connections close now, busy ones after
    // their answer.
    connections.close_all();
    let _ = permits.acquire_many(max_connections as u32).await;
    Ok(())
}

/// Milliseconds since `started`, plus one, so that 0 can mean "not set".
fn ms_since(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64 + 1
}

/// A connection's socket, noting when a request's first byte arrives while
/// no request is in flight: the start of its header read timeout.
struct Watched {
    inner: tokio::net::TcpStream,
    connection: Arc<Connection>,
    started: Instant,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let connection = &self.connection;
        if buf.filled().len() > before && connection.in_flight.load(Ordering::Acquire) == 0 {
            let _ = connection.headers_since_ms.compare_exchange(
                0,
                ms_since(self.started),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn front_door(state: ServerState, request: http::Request<Body>) -> Response {
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
    let read = tokio::time::timeout(
        state.body_read_timeout,
        axum::body::to_bytes(body, state.max_body),
    );
    let bytes: Bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        // Chunked bodies have no declared size; past the limit is all we know.
        Ok(Err(error)) if is_over_limit(&error) => return too_large(state.max_body + 1),
        // A body that is not valid HTTP framing (a malformed chunk), or a
        // connection that broke mid-body.
        Ok(Err(error)) => {
            return with_close(to_axum(error_response(&Error::Request(
                RequestError::MalformedBody(error.to_string()),
            ))));
        }
        Err(_) => {
            return with_close(to_axum(error_response(&Error::Request(
                RequestError::BodyTimeout {
                    seconds: state.body_read_timeout.as_secs_f64(),
                },
            ))));
        }
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

/// Whether reading a body failed only because it passed the limit.
fn is_over_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// The rest of a body that could not be read is unknown: the connection
/// cannot carry another request.
fn with_close(mut response: Response) -> Response {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

fn to_axum(response: http::Response<Bytes>) -> Response {
    response.map(Body::from)
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
