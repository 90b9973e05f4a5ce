//! The admin server over real TCP: its routes, and the bounds that keep a hostile or
//! broken client from holding it: header timeout, connection limit, request timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use meshfilter_admin::{Admin, ServerLimits};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

async fn start(limits: ServerLimits) -> (String, CancellationToken) {
    let admin = Admin::new(
        Registry::default(),
        || Err("warming up".to_string()),
        || serde_json::json!({"role": "test"}),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cancel = CancellationToken::new();
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let c = cancel.clone();
    tokio::spawn(async move { admin.serve(listener, slow, limits, c).await });
    (addr, cancel)
}

fn get_status(addr: &str, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    match ureq::get(&url).timeout(Duration::from_secs(20)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer() {
    let (addr, cancel) = start(ServerLimits::default()).await;
    let a = addr.clone();
    let answers = tokio::task::spawn_blocking(move || {
        [
            get_status(&a, "/healthz"),
            get_status(&a, "/readyz"),
            get_status(&a, "/status"),
            get_status(&a, "/metrics"),
        ]
    })
    .await
    .unwrap();
    assert_eq!(answers[0], (200, "ok".to_string()));
    assert_eq!(answers[1], (503, "warming up".to_string()));
    assert_eq!(answers[2], (200, r#"{"role":"test"}"#.to_string()));
    assert_eq!(answers[3].0, 200);
    assert!(
        answers[3]
            .1
            .contains("meshfilter_admin_connections_refused_total")
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_its_headers_is_dropped() {
    let limits = ServerLimits {
        header_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let (addr, cancel) = start(limits).await;
    let closed = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        // The server answers 408 or just closes: either way the read ends.
        let _ = stream.read_to_end(&mut buf);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(closed < Duration::from_secs(5), "held for {closed:?}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    let limits = ServerLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..ServerLimits::default()
    };
    let (addr, cancel) = start(limits).await;
    let a = addr.clone();
    let refused = tokio::task::spawn_blocking(move || {
        // Two idle connections take both places.
        let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&a).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut third = TcpStream::connect(&a).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        let n = third.read_to_end(&mut buf).unwrap_or(0);
        drop(held);
        n
    })
    .await
    .unwrap();
    assert_eq!(
        refused, 0,
        "the third connection is closed without an answer"
    );
    // Places are free again: the count of refusals shows in the metrics.
    let a = addr.clone();
    let metrics = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = ureq::get(&format!("http://{a}/metrics"))
                .timeout(Duration::from_secs(2))
                .call()
            {
                return r.into_string().unwrap();
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("meshfilter_admin_connections_refused_total 1"),
        "{metrics}"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_is_answered_503() {
    let limits = ServerLimits {
        request_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let (addr, cancel) = start(limits).await;
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || get_status(&addr, "/slow"))
        .await
        .unwrap();
    assert_eq!(answer.0, 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    cancel.cancel();
}
