//! A bound HTTP listener and its router: what the telemetry server and every service API share.
//!
//! Binding happens before the service reports itself started, so a port conflict fails start-up
//! with an error naming the address instead of surfacing later; serving ends gracefully, letting
//! in-flight requests finish, when the shutdown token is cancelled.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A listener bound to its address, with the router it will serve.
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
}

impl HttpServer {
    /// Binds `addr` now; `what` names the listener in the error ("telemetry", "the API").
    pub async fn bind(addr: SocketAddr, what: &str, router: Router) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))?;
        Ok(HttpServer { listener, router })
    }

    /// The bound address (the port the OS chose when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}
