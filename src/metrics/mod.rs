//! Prometheus metrics over HTTP, opt in (`[metrics] listen = "127.0.0.1:9586"`, or
//! `--metrics ADDR` on the wireguard-go command line): `GET /metrics` answers the text of
//! [`render`] for one snapshot of the device.
//!
//! A scrape must never hurt the tunnel: each one takes one snapshot through the data plane's
//! mailbox (`ControlSender::get`, answered between two batches like a `wg show`) and formats
//! it here, on the tokio thread, never on the loop. A slow or hostile client cannot pile up
//! work either: at most [`MAX_CONNECTIONS`] connections are served at once (more are closed
//! at once), each connection serves one request and is cut after [`CONNECTION_TIMEOUT`]
//! however slowly it reads or writes, so a silent client holds one slot for a few seconds
//! and other scrapes go on meanwhile.

mod render;

pub use render::{PeerNames, render};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::driver::ControlSender;

/// Connections served at once; more are closed on arrival (Prometheus scrapes one at a time).
pub const MAX_CONNECTIONS: usize = 8;
/// The longest one connection may take from accept to its last byte written.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a scrape waits for the data plane's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// OpenMetrics text, which prometheus-client writes and Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A served metrics endpoint; dropping it stops accepting.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    names: watch::Sender<Arc<PeerNames>>,
    accept: JoinHandle<()>,
}

/// The endpoint's socket, bound before the interface is set up so that a taken address stops
/// the daemon before it changes anything; [`MetricsListener::serve`] starts answering.
#[derive(Debug)]
pub struct MetricsListener {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    pub fn bind(addr: SocketAddr) -> Result<MetricsListener, MetricsError> {
        let bind_err = |source| MetricsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        // tokio needs a non-blocking socket.
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(MetricsListener { listener, addr })
    }

    /// Serves the metrics of interface `ifname` on the current tokio runtime, asking
    /// `control` for a snapshot per scrape, with `names` as the peers' `name` labels.
    pub fn serve(
        self,
        ifname: &str,
        control: ControlSender,
        names: PeerNames,
    ) -> Result<MetricsServer, MetricsError> {
        let addr = self.addr;
        let listener = TcpListener::from_std(self.listener)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer::spawn(listener, addr, ifname, control, names))
    }
}

impl MetricsServer {
    /// [`MetricsListener::bind`] and [`MetricsListener::serve`] in one step.
    pub fn start(
        addr: SocketAddr,
        ifname: &str,
        control: ControlSender,
        names: PeerNames,
    ) -> Result<MetricsServer, MetricsError> {
        MetricsListener::bind(addr)?.serve(ifname, control, names)
    }

    fn spawn(
        listener: TcpListener,
        bound: SocketAddr,
        ifname: &str,
        control: ControlSender,
        names: PeerNames,
    ) -> MetricsServer {
        let (names, names_rx) = watch::channel(Arc::new(names));
        let scrape = Arc::new(Scrape {
            ifname: ifname.to_owned(),
            control,
            names: names_rx,
        });
        let accept = tokio::spawn(accept_loop(listener, scrape));
        tracing::info!(listen = %bound, "serving metrics at http://{bound}/metrics");
        MetricsServer {
            addr: bound,
            names,
            accept,
        }
    }

    /// The address actually bound (a port of 0 is a fresh one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the peer names of the `name` label (after a reload).
    pub fn set_names(&self, names: PeerNames) {
        self.names.send_replace(Arc::new(names));
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Connections in flight end by their own timeout.
        self.accept.abort();
    }
}

/// What one scrape needs.
struct Scrape {
    ifname: String,
    control: ControlSender,
    names: watch::Receiver<Arc<PeerNames>>,
}

async fn accept_loop(listener: TcpListener, scrape: Arc<Scrape>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: close this one now rather than queue it (a backlog is what a flood wants).
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_CONNECTIONS} connections busy, closing a new one");
            continue;
        };
        let scrape = Arc::clone(&scrape);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let scrape = Arc::clone(&scrape);
                async move { Ok::<_, Infallible>(answer(&scrape, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // However the client behaves (silent, slow reader), the slot is free after this.
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!("metrics connection timed out"),
            }
            drop(slot);
        });
    }
}

/// The response to one request: `GET /metrics` (or `/`), else 404 or 405.
async fn answer(scrape: &Scrape, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !matches!(request.uri().path(), "/metrics" | "/") {
        return plain(StatusCode::NOT_FOUND, "not found: try /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let snapshot = match tokio::time::timeout(SNAPSHOT_TIMEOUT, scrape.control.get()).await {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(_)) | Err(_) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the data plane did not answer\n",
            );
        }
    };
    let names = Arc::clone(&scrape.names.borrow());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = render(&scrape.ifname, &snapshot, &names, now);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use tokio::sync::mpsc;

    use super::*;
    use crate::driver::ControlRequest;
    use crate::reconcile::Snapshot;

    /// A stand-in for the event loop that answers every `get` with an empty device.
    fn fake_loop(mut rx: mpsc::Receiver<ControlRequest>) {
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                if let ControlRequest::Get { reply } = request {
                    let _ = reply.send(Snapshot::default());
                }
            }
        });
    }

    /// A blocking HTTP/1.0 exchange on loopback, bounded by a timeout.
    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read");
        reply
    }

    #[test]
    fn silent_clients_do_not_block_scrapes_and_excess_ones_are_closed() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(async {
            let (tx, rx) = mpsc::channel(crate::driver::control::CONTROL_QUEUE);
            fake_loop(rx);
            let control = ControlSender::new(tx, None);
            let addr = "127.0.0.1:0".parse().expect("addr");
            MetricsServer::start(addr, "tnd-m0", control, PeerNames::new()).expect("start")
        });
        let addr = server.local_addr();
        // Clients that connect and say nothing take slots, but not all of them.
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS - 1)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let reply = get(addr, "/metrics");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a scrape waited"
        );
        assert!(
            reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
            "{reply}"
        );
        assert!(reply.contains("openmetrics-text"), "{reply}");
        assert!(
            reply.contains("tandem_peers{interface=\"tnd-m0\"} 0"),
            "{reply}"
        );
        assert!(get(addr, "/nope").contains(" 404 "));

        // All slots taken: a new connection is closed at once, not queued.
        let mut more: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut last = more.pop().expect("one");
        last.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        assert!(matches!(last.read(&mut buf), Ok(0) | Err(_)), "closed");

        // The silent ones are cut after CONNECTION_TIMEOUT, and scrapes work again.
        std::thread::sleep(CONNECTION_TIMEOUT + Duration::from_millis(500));
        assert!(get(addr, "/metrics").contains("tandem_under_load"));
        drop((silent, more));
        rt.block_on(async { drop(server) });
    }
}
