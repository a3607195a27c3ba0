//! The Kubernetes client: which kubeconfig and context, and which namespace a target lives in.

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use mirrord_protocol::config::{
    MirrordConfig, KUBECONFIG_ENV, KUBE_CONTEXT_ENV, TARGET_NAMESPACE_ENV,
};
use std::path::PathBuf;

/// A client and the namespace the kube context names (`default` when it names none).
#[derive(Clone)]
pub struct KubeConnection {
    pub client: Client,
    pub context_namespace: String,
}

/// Where the cluster connection comes from. Environment variables beat the configuration file
/// (as for every mirrord setting an IDE passes per launch).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeSettings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub accept_invalid_certificates: bool,
}

impl KubeSettings {
    pub fn from_config(config: &MirrordConfig) -> KubeSettings {
        Self::from_parts(
            config,
            std::env::var(KUBECONFIG_ENV).ok(),
            std::env::var(KUBE_CONTEXT_ENV).ok(),
        )
    }

    fn from_parts(
        config: &MirrordConfig,
        env_kubeconfig: Option<String>,
        env_context: Option<String>,
    ) -> KubeSettings {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        KubeSettings {
            kubeconfig: nonempty(env_kubeconfig)
                .or_else(|| config.kubeconfig.clone())
                .map(|p| expand_home(&p)),
            context: nonempty(env_context).or_else(|| config.kube_context.clone()),
            accept_invalid_certificates: config.accept_invalid_certificates.unwrap_or(false),
        }
    }

    /// Whether anything says a cluster is meant: an explicit kubeconfig, `$KUBECONFIG`, or
    /// `~/.kube/config`. (The daemon uses this to decide whether to list cluster targets.)
    pub fn kubeconfig_exists(&self) -> bool {
        if let Some(p) = &self.kubeconfig {
            return p.exists();
        }
        if let Some(v) = std::env::var_os("KUBECONFIG") {
            return std::env::split_paths(&v).any(|p| p.exists());
        }
        directories::BaseDirs::new()
            .map(|d| d.home_dir().join(".kube/config").exists())
            .unwrap_or(false)
    }

    pub async fn connect(&self) -> Result<KubeConnection> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("using the kubeconfig {}", path.display()))?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .context("reading the kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
            None => Config::infer().await.context(
                "no Kubernetes configuration: set kubeconfig in the configuration, \
                 MIRRORD_KUBECONFIG or KUBECONFIG, or create ~/.kube/config",
            )?,
        };
        if self.accept_invalid_certificates {
            config.accept_invalid_certs = true;
        }
        let context_namespace = config.default_namespace.clone();
        let client = build_client(config).context("creating the Kubernetes client")?;
        Ok(KubeConnection {
            client,
            context_namespace,
        })
    }
}

/// kube's client, but with `TCP_NODELAY` on its connections to the API server: every
/// port-forward carries a flow's small writes as WebSocket frames, and with Nagle a frame that
/// rustls writes as two TLS records waits for the API server's delayed ACK (40 ms). A
/// configuration with a proxy gets kube's own client (which knows proxies).
fn build_client(config: Config) -> Result<Client> {
    use kube::client::ConfigExt;
    if config.proxy_url.is_some() {
        return Ok(Client::try_from(config)?);
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(following::Connector(http))?;
    let hyper: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let service = tower5::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // The auth layer's errors are boxed; both of its branches must say the same.
        .map_err(
            |e: hyper_util::client::legacy::Error| -> Box<dyn std::error::Error + Send + Sync> {
                Box::new(e)
            },
        )
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// Connections to the API server whose sockets follow their flow to the relay's bulk runtime
/// (`mirrord_relay::Following`): a port-forward that carries a download is then read and
/// written, TLS included, by the bulk threads alone.
mod following {
    use hyper::rt::{Read, ReadBufCursor, Write};
    use hyper::Uri;
    use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
    use hyper_util::rt::TokioIo;
    use mirrord_relay::Following;
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::net::TcpStream;

    #[derive(Clone)]
    pub struct Connector(pub HttpConnector);

    pub struct Io(TokioIo<Following<TcpStream>>);

    type Connecting = Pin<Box<dyn Future<Output = Result<Io, BoxError>> + Send>>;
    type BoxError = Box<dyn std::error::Error + Send + Sync>;

    impl tower5::Service<Uri> for Connector {
        type Response = Io;
        type Error = BoxError;
        type Future = Connecting;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            tower5::Service::<Uri>::poll_ready(&mut self.0, cx).map_err(Into::into)
        }

        fn call(&mut self, uri: Uri) -> Connecting {
            let connecting = tower5::Service::call(&mut self.0, uri);
            Box::pin(async move {
                let tcp = connecting.await?.into_inner();
                Ok(Io(TokioIo::new(Following::new(tcp))))
            })
        }
    }

    impl Connection for Io {
        fn connected(&self) -> Connected {
            Connected::new()
        }
    }

    impl Read for Io {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: ReadBufCursor<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl Write for Io {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.0.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => directories::BaseDirs::new()
            .map(|d| d.home_dir().join(rest))
            .unwrap_or_else(|| PathBuf::from(p)),
        None => PathBuf::from(p),
    }
}

/// The target's namespace: the command line (`-n`), else `MIRRORD_TARGET_NAMESPACE`, else the
/// configuration's `target.namespace`, else the kube context's namespace (which kube-rs reports
/// as `default` when the context names none).
pub fn target_namespace(
    cli: Option<&str>,
    config: &MirrordConfig,
    context_namespace: &str,
) -> String {
    let env = std::env::var(TARGET_NAMESPACE_ENV).ok();
    pick_namespace(
        cli,
        env.as_deref(),
        config.target.as_ref().and_then(|t| t.namespace.as_deref()),
        context_namespace,
    )
}

fn pick_namespace(
    cli: Option<&str>,
    env: Option<&str>,
    config: Option<&str>,
    context: &str,
) -> String {
    [cli, env, config]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty())
        .unwrap_or(if context.is_empty() {
            "default"
        } else {
            context
        })
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_precedence() {
        assert_eq!(pick_namespace(Some("a"), Some("b"), Some("c"), "d"), "a");
        assert_eq!(pick_namespace(None, Some("b"), Some("c"), "d"), "b");
        assert_eq!(pick_namespace(None, Some(""), Some("c"), "d"), "c");
        assert_eq!(pick_namespace(None, None, None, "d"), "d");
        assert_eq!(pick_namespace(None, None, None, ""), "default");
    }

    #[test]
    fn environment_beats_the_file_for_kubeconfig_and_context() {
        let cfg = MirrordConfig::from_json(
            r#"{"kubeconfig": "/etc/kc", "kube_context": "file-ctx", "accept_invalid_certificates": true}"#,
        )
        .unwrap();
        let s = KubeSettings::from_parts(&cfg, None, None);
        assert_eq!(s.kubeconfig, Some(PathBuf::from("/etc/kc")));
        assert_eq!(s.context.as_deref(), Some("file-ctx"));
        assert!(s.accept_invalid_certificates);
        let s = KubeSettings::from_parts(&cfg, Some("/tmp/kc".into()), Some("env-ctx".into()));
        assert_eq!(s.kubeconfig, Some(PathBuf::from("/tmp/kc")));
        assert_eq!(s.context.as_deref(), Some("env-ctx"));
    }
}
