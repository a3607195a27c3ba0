//! HTTPS steal: a port where the target terminates TLS itself (`tls_ports`).
//!
//! The agent reads the target's certificate chain and key through the target's root
//! (`/proc/PID/root`), and for each redirected connection:
//! - reads the ClientHello without answering it; bytes that are not TLS, a name (SNI) the
//!   certificate does not cover, a client whose cipher suites or protocols (ALPN) the agent
//!   cannot speak: the connection goes on to the target byte for byte, so the target's clients
//!   never see another certificate than the target's own;
//! - otherwise connects to the target as a TLS client first, offering the client's ALPN, and
//!   answers the client with the target's certificate and the protocol the target chose; the
//!   decrypted streams are then served like any plain connection of the port: HTTP routed per
//!   request by the stealers' filters, or relayed with mirror and observer copies.
//!
//! Invariant: the private key is read here and stays in the `CertifiedKey` of this agent: it is
//! never logged, never put in an error message, never sent on a channel.

use super::sniff::{sniff, Prefixed, Protocol, SNIFF_TIMEOUT};
use super::{BoxIo, Hop, IncomingState, Subscriber};
use anyhow::{anyhow, bail, Context, Result};
use mirrord_protocol::agent::{TlsPort, TrafficMode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::ResolvesClientCert;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::server::Acceptor;
use tokio_rustls::rustls::sign::{CertifiedKey, SingleCertAndKey};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, InconsistentKeys, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// A ClientHello larger than this is not read further: the connection passes through.
const MAX_HELLO: usize = 64 * 1024;

/// The target's certificate and key for one TLS port.
pub(crate) struct TlsTermination {
    certified: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

/// What a client asked for in its ClientHello.
pub(super) struct Hello {
    sni: Option<String>,
    /// `None`: the client sent no ALPN extension.
    alpn: Option<Vec<Vec<u8>>>,
    /// At least one of the client's cipher suites is one the agent speaks.
    suites_ok: bool,
}

/// A client the agent terminates TLS for: its name and the protocols to offer the target.
pub(super) struct Terminate {
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
}

/// How the agent reaches the target (or the next agent) again on a TLS port: as a TLS client,
/// with the name and protocol the first connection used.
pub(super) struct PodTls {
    pub(super) connector: TlsConnector,
    pub(super) server_name: ServerName<'static>,
}

impl TlsTermination {
    /// Reads the chain and key of `port` from the target's filesystem under `root`
    /// (`/proc/PID/root`, or `/` for a `netns/` target).
    pub(crate) fn load(root: &Path, port: u16, spec: &TlsPort) -> Result<TlsTermination> {
        let in_target = |p: &str| root.join(p.trim_start_matches('/'));
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(in_target(&spec.cert_pem))
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow!(
                        "port {port}: reading the certificate chain {} in the target: {e}",
                        spec.cert_pem
                    )
                })?;
        if chain.is_empty() {
            bail!(
                "port {port}: no certificate in {} in the target",
                spec.cert_pem
            );
        }
        // Invariant: errors about the key name the file and the kind of failure, never any of
        // its content (some PEM errors quote the bytes they choke on).
        let key = PrivateKeyDer::from_pem_file(in_target(&spec.key_pem)).map_err(|e| {
            let why = match e {
                rustls_pki_types::pem::Error::Io(io) => io.to_string(),
                rustls_pki_types::pem::Error::NoItemsFound => "no private key in it".into(),
                _ => "not a PEM private key".into(),
            };
            anyhow!(
                "port {port}: reading the private key {} in the target: {why}",
                spec.key_pem
            )
        })?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|_| anyhow!("port {port}: {} is not a usable private key", spec.key_pem))?;
        webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
            anyhow!(
                "port {port}: the first certificate of {} cannot be read: {e}",
                spec.cert_pem
            )
        })?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            // Unknown: the key type cannot tell its public half; the handshake will show it.
            Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(_) => bail!(
                "port {port}: the key {} does not belong to the certificate {}",
                spec.key_pem,
                spec.cert_pem
            ),
        }
        Ok(TlsTermination {
            certified: Arc::new(certified),
            provider,
        })
    }

    /// Whether the agent answers this client itself, and what it then offers the target.
    pub(super) fn terminates(&self, hello: &Hello) -> Option<Terminate> {
        if !hello.suites_ok || !self.covers(hello.sni.as_deref()) {
            return None;
        }
        let alpn = match &hello.alpn {
            None => Vec::new(),
            Some(offered) => {
                let known: Vec<Vec<u8>> = offered
                    .iter()
                    .filter(|p| p.as_slice() == ALPN_H2 || p.as_slice() == ALPN_HTTP1)
                    .cloned()
                    .collect();
                // A client that speaks only protocols the agent does not: the target's alone.
                if known.is_empty() {
                    return None;
                }
                known
            }
        };
        Some(Terminate {
            sni: hello.sni.clone(),
            alpn,
        })
    }

    /// A client without SNI gets the certificate too: a server with one certificate gives it
    /// to such clients, and the target serves this one on this port.
    fn covers(&self, sni: Option<&str>) -> bool {
        let Some(name) = sni else { return true };
        let Ok(name) = ServerName::try_from(name) else {
            return false;
        };
        let Ok(leaf) = webpki::EndEntityCert::try_from(&self.certified.cert[0]) else {
            return false;
        };
        leaf.verify_is_valid_for_subject_name(&name).is_ok()
    }

    fn server_config(&self, alpn: Option<&[u8]>) -> Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(self.certified.clone())));
        config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
        Ok(Arc::new(config))
    }

    /// A TLS client of the target offering `alpn`; `asked` records whether the target asked
    /// for a client certificate (which the agent does not have).
    fn connector(&self, alpn: Vec<Vec<u8>>, asked: Arc<CertificateAsked>) -> Result<TlsConnector> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TargetVerifier {
                provider: self.provider.clone(),
            }))
            .with_client_cert_resolver(asked);
        config.alpn_protocols = alpn;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// Reads a connection's ClientHello without answering it. Returns what the client asked for
/// (`None`: not TLS, or not within the bound) and every byte read, to be replayed.
pub(super) async fn read_client_hello(
    stream: &mut BoxIo,
    provider: &CryptoProvider,
) -> (Option<Hello>, Vec<u8>) {
    let mut seen = Vec::new();
    let mut acceptor = Acceptor::default();
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        if seen.len() >= MAX_HELLO {
            return (None, seen);
        }
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return (None, seen),
        };
        seen.extend_from_slice(&buf[..n]);
        // A TLS connection starts with a handshake record (content type 22).
        if seen[0] != 0x16 {
            return (None, seen);
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            match acceptor.read_tls(&mut chunk) {
                Ok(0) | Err(_) => return (None, seen),
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let suites_ok = hello
                    .cipher_suites()
                    .iter()
                    .any(|s| provider.cipher_suites.iter().any(|ours| ours.suite() == *s));
                let alpn = hello
                    .alpn()
                    .map(|protocols| protocols.map(<[u8]>::to_vec).collect());
                let sni = hello.server_name().map(str::to_owned);
                return (
                    Some(Hello {
                        sni,
                        alpn,
                        suites_ok,
                    }),
                    seen,
                );
            }
            Err(_) => return (None, seen),
        }
    }
}

/// The name the agent gives the target: the client's SNI, else the address it connected to.
fn target_name(sni: Option<&str>, original: SocketAddr) -> ServerName<'static> {
    sni.and_then(|s| ServerName::try_from(s.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(original.ip().into()))
}

impl IncomingState {
    /// Serves one connection of a TLS port (see the module doc).
    pub(super) async fn serve_tls(
        self: &Arc<Self>,
        mut stream: BoxIo,
        hop: Hop,
        tls: Arc<TlsTermination>,
        stealers: Vec<Subscriber>,
        mirrors: Vec<Subscriber>,
    ) -> Result<()> {
        let (hello, seen) = read_client_hello(&mut stream, &tls.provider).await;
        let stream = Prefixed::new(seen, stream);
        // Invariant: a program on a TLS port only ever gets what the agent decrypted, so what
        // passes through untouched gives mirrors no copy; observers (dump) see it as it is.
        let observers: Vec<Subscriber> = mirrors
            .iter()
            .filter(|m| m.mode == TrafficMode::Observe)
            .cloned()
            .collect();
        let Some(terminate) = hello.as_ref().and_then(|h| tls.terminates(h)) else {
            tracing::debug!(port = hop.port, peer = %hop.peer, "not TLS for this certificate: passed through");
            return self.pass_through(Box::new(stream), hop, &observers).await;
        };
        let server_name = target_name(terminate.sni.as_deref(), hop.original);
        let upstream = self
            .next_hop(hop.port, hop.peer, hop.original, &hop.visited)
            .await?;
        let asked = Arc::new(CertificateAsked::default());
        let pod = tls
            .connector(terminate.alpn, asked.clone())?
            .connect(server_name.clone(), upstream)
            .await;
        // The client has not been answered yet, so a target the agent cannot be a client of
        // still gets its client, untouched: one that refuses the agent, or asks for a client
        // certificate (only the client has one; with TLS 1.3 a refusal would only come after
        // the handshake).
        let pod = match pod {
            Ok(pod) if !asked.0.load(Ordering::Relaxed) => pod,
            Ok(_) => {
                tracing::debug!(port = hop.port, peer = %hop.peer, "the target asks for client certificates: passed through");
                return self.pass_through(Box::new(stream), hop, &observers).await;
            }
            Err(e) => {
                tracing::debug!(port = hop.port, peer = %hop.peer, "TLS to the target failed ({e}): passed through");
                return self.pass_through(Box::new(stream), hop, &observers).await;
            }
        };
        let alpn = pod.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
            .await
            .context("reading the ClientHello again")?;
        let client = start
            .into_stream(tls.server_config(alpn.as_deref())?)
            .await
            .context("TLS handshake with the client")?;
        tracing::debug!(port = hop.port, peer = %hop.peer, alpn = ?alpn.as_deref().map(String::from_utf8_lossy), "TLS terminated");
        let client: BoxIo = Box::new(client);
        let pod: BoxIo = Box::new(pod);
        if stealers.is_empty() {
            return self.relay(client, pod, &hop, &mirrors).await;
        }
        let unfiltered = stealers.iter().find(|s| s.filter.is_none()).cloned();
        let (protocol, client) = sniff(client).await;
        match protocol {
            Protocol::Http => {
                let again = PodTls {
                    connector: tls.connector(alpn.into_iter().collect(), asked)?,
                    server_name,
                };
                self.route_http(client, hop, stealers, Some((again, pod)))
                    .await
            }
            Protocol::Other => {
                let channel = match &unfiltered {
                    Some(stealer) => {
                        self.stolen_channel(&stealer.client, hop.port, hop.peer, hop.original)
                            .await
                    }
                    None => None,
                };
                match channel {
                    Some(mut channel) => {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut channel).await;
                        Ok(())
                    }
                    None => self.relay(Box::new(client), pod, &hop, &mirrors).await,
                }
            }
        }
    }
}

/// Records that the target asked for a client certificate; the agent has none to give.
#[derive(Debug, Default)]
struct CertificateAsked(AtomicBool);

impl ResolvesClientCert for CertificateAsked {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The agent's check of the target's certificate: none of the chain, because the agent talks
/// to the target's own address inside the target's network namespace (or to another agent
/// there), never across a network, and it has just read that certificate from the target's
/// files; the handshake signatures are still verified, so the TLS session is a sound one.
#[derive(Debug)]
struct TargetVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for TargetVerifier {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::process::Command;
    use tokio::io::AsyncWriteExt;

    fn provider() -> CryptoProvider {
        tokio_rustls::rustls::crypto::ring::default_provider()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    }

    /// A real ClientHello for `name`, offering `alpn`, as a rustls client writes it.
    fn client_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TargetVerifier {
                provider: Arc::new(provider()),
            }))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut conn = tokio_rustls::rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(name.to_owned()).expect("a DNS name"),
        )
        .expect("a client connection");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("writing the hello");
        out
    }

    /// Sends `input` in pieces cut at `cuts`, then closes; returns what `read_client_hello`
    /// decided and every byte the connection yields afterwards (the replayed ones first).
    fn read_all(input: &[u8], cuts: &[usize]) -> (Option<Hello>, Vec<u8>) {
        runtime().block_on(async {
            let (mut peer, ours) = tokio::io::duplex(256);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.sort_unstable();
            let owned = input.to_vec();
            let writer = tokio::spawn(async move {
                let mut from = 0;
                for p in points.into_iter().chain([owned.len()]) {
                    if peer.write_all(&owned[from..p]).await.is_err() {
                        return;
                    }
                    from = p;
                    tokio::task::yield_now().await;
                }
            });
            let mut stream: BoxIo = Box::new(ours);
            let (hello, seen) = read_client_hello(&mut stream, &provider()).await;
            let mut all = Prefixed::new(seen, stream);
            let mut bytes = Vec::new();
            all.read_to_end(&mut bytes).await.expect("reading the rest");
            writer.await.expect("the writer task");
            (hello, bytes)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever arrives, TLS-looking or not, in whatever pieces: no panic, and not one byte
        /// is lost or repeated for whoever gets the connection next.
        #[test]
        fn hostile_bytes_lose_nothing(
            head in prop::sample::select(vec![&b""[..], b"\x16", b"\x16\x03\x01", b"\x16\x03\x01\x02\x00\x01", b"GET "]),
            tail in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let mut input = head.to_vec();
            input.extend_from_slice(&tail);
            let (hello, bytes) = read_all(&input, &cuts);
            prop_assert_eq!(bytes, input.clone());
            if input.first() != Some(&0x16) {
                prop_assert!(hello.is_none());
            }
        }

        /// A real ClientHello, in any pieces and followed by anything: its name and protocols
        /// are read, and every byte is still there.
        #[test]
        fn a_client_hello_is_read_in_any_pieces(
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            after in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut input = client_hello("pod.test", &[b"h2", b"http/1.1"]);
            input.extend_from_slice(&after);
            let (hello, bytes) = read_all(&input, &cuts);
            prop_assert_eq!(bytes, input);
            let hello = hello.expect("a ClientHello");
            prop_assert_eq!(hello.sni.as_deref(), Some("pod.test"));
            prop_assert_eq!(hello.alpn, Some(vec![b"h2".to_vec(), b"http/1.1".to_vec()]));
            prop_assert!(hello.suites_ok);
        }
    }

    /// A temporary directory with a CA-less self-signed certificate for `pod.test` and its key
    /// (made by `openssl`), and another key.
    struct Files(PathBuf);

    impl Files {
        fn new(tag: &str) -> Files {
            let dir = std::env::temp_dir()
                .join(format!("mirrord-agent-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let openssl = |args: &[&str]| {
                let ok = Command::new("openssl")
                    .current_dir(&dir)
                    .args(args)
                    .output()
                    .expect("openssl runs")
                    .status
                    .success();
                assert!(ok, "openssl {args:?}");
            };
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "tls.key",
                "-out",
                "tls.crt",
                "-days",
                "1",
                "-subj",
                "/CN=pod.test",
                "-addext",
                "subjectAltName=DNS:pod.test",
            ]);
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-out",
                "other.key",
            ]);
            Files(dir)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn spec(cert: &str, key: &str) -> TlsPort {
        TlsPort {
            cert_pem: cert.into(),
            key_pem: key.into(),
        }
    }

    fn hello(sni: Option<&str>, alpn: Option<&[&[u8]]>) -> Hello {
        Hello {
            sni: sni.map(str::to_owned),
            alpn: alpn.map(|a| a.iter().map(|p| p.to_vec()).collect()),
            suites_ok: true,
        }
    }

    #[test]
    fn loads_the_targets_files_and_terminates_only_what_it_covers() {
        let files = Files::new("ok");
        // Paths are in the target's filesystem: absolute ones are taken under its root.
        let tls = TlsTermination::load(&files.0, 443, &spec("/tls.crt", "tls.key")).unwrap();
        assert!(tls.terminates(&hello(Some("pod.test"), None)).is_some());
        assert!(tls.terminates(&hello(None, None)).is_some(), "no SNI");
        assert!(tls.terminates(&hello(Some("other.test"), None)).is_none());
        let t = tls
            .terminates(&hello(Some("pod.test"), Some(&[b"spdy/3", b"h2"])))
            .unwrap();
        assert_eq!(t.alpn, vec![b"h2".to_vec()], "only what the agent speaks");
        assert!(
            tls.terminates(&hello(Some("pod.test"), Some(&[b"acme-tls/1"])))
                .is_none(),
            "a protocol the agent does not speak"
        );
        let mut no_suite = hello(Some("pod.test"), None);
        no_suite.suites_ok = false;
        assert!(tls.terminates(&no_suite).is_none());
    }

    #[test]
    fn bad_files_are_clear_errors_that_never_show_the_key() {
        let files = Files::new("bad");
        let err = |cert: &str, key: &str| {
            TlsTermination::load(&files.0, 443, &spec(cert, key))
                .err()
                .expect("an error")
                .to_string()
        };
        let e = err("tls.crt", "missing.key");
        assert!(e.contains("port 443") && e.contains("missing.key"), "{e}");
        let e = err("missing.crt", "tls.key");
        assert!(e.contains("missing.crt"), "{e}");
        let e = err("tls.crt", "other.key");
        assert!(e.contains("does not belong"), "{e}");
        // A key file whose body is broken: the error names it, and shows none of its bytes.
        let key = std::fs::read_to_string(files.0.join("tls.key")).unwrap();
        let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let broken = key.replace(body[0], &format!("{}!!", body[0]));
        std::fs::write(files.0.join("broken.key"), &broken).unwrap();
        let e = err("tls.crt", "broken.key");
        assert!(e.contains("broken.key"), "{e}");
        for line in &body {
            assert!(!e.contains(line), "{e}");
        }
        let e = err("tls.key", "tls.key");
        assert!(e.contains("no certificate"), "{e}");
    }
}
