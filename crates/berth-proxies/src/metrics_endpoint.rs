//! The `GET /metrics` listener both proxies offer on a separate address, so
//! Prometheus never needs a path into the proxied socket or the egress port.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::transport::{self, Drain};

/// The content type of the OpenMetrics text format `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `encode()` at `GET /metrics` (any other path is a 404) until
/// `shutdown`. `encode` is called once per scrape. Accept errors back off
/// and open scrapes finish as in [`transport::serve`].
pub async fn serve(
    listener: TcpListener,
    encode: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) {
    transport::serve(listener, shutdown, |stream, _peer, drain: &Drain| {
        let encode = encode.clone();
        let drain = drain.clone();
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer(req.uri().path(), &encode);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            transport::drive(conn, &drain, std::future::pending()).await;
        }
    })
    .await
}

fn answer(path: &str, encode: &impl Fn() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if path == "/metrics" {
        (StatusCode::OK, OPENMETRICS, encode())
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only /metrics is here\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_path_answers_openmetrics_and_others_are_not_found() {
        let encode = || "# EOF\n".to_owned();
        let ok = answer("/metrics", &encode);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], OPENMETRICS);
        let missing = answer("/", &encode);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
