//! `feature.network.incoming.https_delivery`: how the requests the agent decrypted on a TLS port
//! (`tls_ports`) reach the program. `tcp` delivers them as they are (plain HTTP); `tls`
//! encrypts them again, for a program that serves HTTPS itself.

use anyhow::{bail, Context, Result};
use mirrord_protocol::config::{DeliveryProtocol, HttpsDelivery};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

/// How long the agent may take to send a delivered connection's first bytes, which tell the
/// protocol to offer the program (the agent speaks first: it is the HTTP client).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS towards the program, built once per session.
pub struct TlsDelivery {
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<RootCertStore>>,
    server_name: ServerName<'static>,
}

impl TlsDelivery {
    /// `None` for plain delivery; an error names the trust root that cannot be used.
    pub fn from_config(config: &HttpsDelivery) -> Result<Option<TlsDelivery>> {
        if config.protocol == DeliveryProtocol::Tcp {
            return Ok(None);
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let roots = if config.trust_roots.is_empty() {
            None
        } else {
            let mut store = RootCertStore::empty();
            for path in &config.trust_roots {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("https_delivery.trust_roots: reading {path}"))?;
                if certs.is_empty() {
                    bail!("https_delivery.trust_roots: no certificate in {path}");
                }
                for cert in certs {
                    store.add(cert).with_context(|| {
                        format!("https_delivery.trust_roots: a certificate of {path}")
                    })?;
                }
            }
            Some(Arc::new(store))
        };
        let name = config.server_name.as_deref().unwrap_or("localhost");
        let server_name = ServerName::try_from(name.to_owned()).with_context(|| {
            format!("https_delivery.server_name: {name:?} is not a DNS name or an IP address")
        })?;
        Ok(Some(TlsDelivery {
            provider,
            roots,
            server_name,
        }))
    }

    /// Connects TLS to the program over `program`, offering the protocol (ALPN) the agent speaks
    /// on `agent`, found by its first bytes; `agent` is returned with those bytes put back.
    pub async fn wrap<P, A>(&self, program: P, mut agent: A) -> Result<(TlsStream<P>, Replay<A>)>
    where
        P: AsyncRead + AsyncWrite + Unpin,
        A: AsyncRead + Unpin,
    {
        let mut first = vec![0u8; 64];
        let mut n = 0;
        // Four bytes tell the h2 preface ("PRI ") from an HTTP/1 request line.
        while n < 4 {
            match tokio::time::timeout(FIRST_BYTES_TIMEOUT, agent.read(&mut first[n..])).await {
                Ok(Ok(0)) => break,
                Ok(Ok(got)) => n += got,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
        }
        first.truncate(n);
        let alpn: &[u8] = if first.starts_with(b"PRI ") {
            b"h2"
        } else {
            b"http/1.1"
        };
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match &self.roots {
            Some(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyProgramCert {
                    provider: self.provider.clone(),
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        let tls = TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), program)
            .await
            .context("TLS handshake with the program")?;
        Ok((
            tls,
            Replay {
                prefix: first,
                pos: 0,
                inner: agent,
            },
        ))
    }
}

/// A stream whose first bytes were read already: they are read again first.
pub struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.pos < me.prefix.len() {
            let n = (me.prefix.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.prefix[me.pos..me.pos + n]);
            me.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Without `trust_roots` the program's certificate is not checked: the connection goes to the
/// program's own listener on this machine's loopback, which the session just chose. The
/// handshake signatures are still verified.
#[derive(Debug)]
struct AnyProgramCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyProgramCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
