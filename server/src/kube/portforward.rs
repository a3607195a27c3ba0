//! The port-forward transport: each channel to a Kubernetes agent (control, every TCP flow,
//! every UDP or incoming flow) is its own `pods/NAME/portforward` WebSocket, so a large
//! download on one flow never stalls another.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Portforwarder};
use kube::Client;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// One port-forward stream to the agent's port. The forwarder (and its WebSocket) lives as long
/// as the stream.
pub struct PortForwardStream {
    stream: DuplexStream,
    forwarder: Portforwarder,
}

impl Drop for PortForwardStream {
    fn drop(&mut self) {
        // The forwarder's task would otherwise keep the WebSocket until the pod side closes.
        self.forwarder.abort();
    }
}

/// Opens a port-forward to `port` of `pod`.
pub async fn open(
    client: &Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<PortForwardStream, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut forwarder = pods.portforward(pod, &[port]).await?;
    // `portforward` was asked for exactly this port, so its stream is there, once.
    let stream = forwarder
        .take_stream(port)
        .expect("the port-forward has a stream for the port it was opened for");
    Ok(PortForwardStream { stream, forwarder })
}

impl AsyncRead for PortForwardStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PortForwardStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// The port-forward protocol has no half-close: ending the writing side ends the stream
    /// (as with `kubectl port-forward`).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
