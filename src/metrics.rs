//! A minimal HTTP endpoint for text: Prometheus metrics of a mount (`--metrics-addr`) and the
//! partition emulator's counters (`prefixfs serve --stats-addr`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Renders the body for a request path; `None` is a 404.
pub type Render = Arc<dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync>;

/// Serves `render` on `addr` until the runtime stops; returns the bound address.
pub async fn serve(addr: SocketAddr, render: Render) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let render = render.clone();
                    async move {
                        let resp = match render(req.uri().path()) {
                            Some((ctype, body)) => Response::builder()
                                .header("content-type", ctype)
                                .body(Full::new(Bytes::from(body))),
                            None => Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"not found\n"))),
                        };
                        Ok::<_, Infallible>(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
