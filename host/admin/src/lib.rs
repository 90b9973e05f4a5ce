//! The admin HTTP server of every meshfilter role: `/healthz`, `/readyz`, `/status` and
//! `/metrics`, plus whatever routes the role adds (`/resolve`, `/explain`).
//!
//! Whatever a client does, the server stays bounded:
//! - at most [`ServerLimits::max_connections`] connections at once; a connection beyond it
//!   is closed at once and counted;
//! - a client has [`ServerLimits::header_timeout`] to send its request headers (a slow
//!   client cannot hold a connection open);
//! - a request that takes longer than [`ServerLimits::request_timeout`] is answered `503`;
//! - a connection is closed gracefully after [`ServerLimits::max_connection_age`], so
//!   keep-alive clients cannot pin connections forever.
//!
//! Its own counters (`meshfilter_admin_*`) are registered in the role's registry.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bounds of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Time a request may take to be answered.
    pub request_timeout: Duration,
    /// Time after which a (keep-alive) connection is closed gracefully.
    pub max_connection_age: Duration,
}

impl Default for ServerLimits {
    /// Room for every node agent of a large cluster keeping one connection each.
    fn default() -> ServerLimits {
        ServerLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(90),
        }
    }
}

type Ready = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
type Status = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;
type Collect = Arc<dyn Fn() + Send + Sync>;

/// What the admin routes answer with.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    ready: Ready,
    status: Status,
    collect: Option<Collect>,
    refused: Counter,
    timed_out: Counter,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// Serves `registry` on `/metrics` (after registering the server's own counters in
    /// it), `ready()` on `/readyz` (`Err` says why not, with a 503) and `status()` on
    /// `/status`.
    pub fn new<S: serde::Serialize>(
        mut registry: Registry,
        ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
        status: impl Fn() -> S + Send + Sync + 'static,
    ) -> Admin {
        let refused = Counter::default();
        let timed_out = Counter::default();
        let r = registry.sub_registry_with_prefix("meshfilter_admin");
        r.register(
            "connections_refused",
            "Connections closed at once because the connection limit was reached",
            refused.clone(),
        );
        r.register(
            "requests_timed_out",
            "Requests answered 503 because they took longer than the request timeout",
            timed_out.clone(),
        );
        Admin {
            registry: Arc::new(registry),
            ready: Arc::new(ready),
            status: Arc::new(move || {
                serde_json::to_value(status()).unwrap_or_else(
                    |e| serde_json::json!({"error": format!("status cannot be rendered: {e}")}),
                )
            }),
            collect: None,
            refused,
            timed_out,
        }
    }

    /// Calls `collect` before every scrape, for values that live outside the process and
    /// are read only when asked for (the kernel's per-CPU counters of a BPF program).
    pub fn collect_before_scrape(mut self, collect: impl Fn() + Send + Sync + 'static) -> Admin {
        self.collect = Some(Arc::new(collect));
        self
    }

    /// The admin routes merged with the role's `extra` routes.
    pub fn router(&self, extra: Router) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
            .merge(extra)
    }

    /// Serves until `cancel`, then lets requests in flight finish (within the request
    /// timeout).
    pub async fn serve(
        &self,
        listener: TcpListener,
        extra: Router,
        limits: ServerLimits,
        cancel: CancellationToken,
    ) {
        let app = self.router(extra);
        let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                self.refused.inc();
                drop(stream);
                continue;
            };
            let app = app.clone();
            let admin = self.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let service = TowerToHyperService::new(tower::service_fn(move |request| {
                    let app = app.clone();
                    let admin = admin.clone();
                    async move {
                        let mut request: axum::extract::Request<_> = request;
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        let answer = tokio::time::timeout(
                            limits.request_timeout,
                            app.oneshot(request.map(axum::body::Body::new)),
                        )
                        .await;
                        Ok::<Response, Infallible>(match answer {
                            Ok(Ok(response)) => response,
                            Ok(Err(never)) => match never {},
                            Err(_) => {
                                admin.timed_out.inc();
                                (StatusCode::SERVICE_UNAVAILABLE, "request timed out")
                                    .into_response()
                            }
                        })
                    }
                }));
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .keep_alive(true);
                let connection = http.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = &mut connection => {}
                    _ = tokio::time::sleep(limits.max_connection_age) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                    _ = cancel.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(limits.request_timeout, connection).await;
                    }
                }
            });
        }
        tasks.close();
        let _ = tokio::time::timeout(limits.request_timeout, tasks.wait()).await;
    }
}

/// Binds `listen` and serves `admin` with `extra` routes until `cancel`: the one way every
/// role starts its HTTP endpoint.
pub async fn bind_and_serve(
    listen: SocketAddr,
    admin: Admin,
    extra: Router,
    limits: ServerLimits,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving /healthz /readyz /status /metrics");
    Ok(tokio::spawn(async move {
        admin.serve(listener, extra, limits, cancel).await
    }))
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, String) {
    match (admin.ready)() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn status(State(admin): State<Admin>) -> axum::Json<serde_json::Value> {
    axum::Json((admin.status)())
}

async fn metrics(State(admin): State<Admin>) -> Response {
    if let Some(collect) = &admin.collect {
        collect();
    }
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
