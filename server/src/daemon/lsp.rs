//! The stdio transport: JSON-RPC with LSP framing, via tower-lsp. The LSP lifecycle and the
//! configuration-file language features are ordinary LSP; the `mirrord/*` methods are custom
//! methods registered on the same service.

use super::{config_lsp, ApiError, ClientId, Daemon, Notifier, Progress};
use mirrord_protocol::api::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tower_lsp::jsonrpc::{Error as RpcError, Result as RpcResult};
use tower_lsp::lsp_types::notification::Notification;
use tower_lsp::lsp_types::*;
use tower_lsp::{Client, LanguageServer, LspService, Server};

/// The one client of the stdio transport.
const STDIO_CLIENT: ClientId = 0;

struct TrafficNote;
impl Notification for TrafficNote {
    type Params = TrafficNotification;
    const METHOD: &'static str = "mirrord/traffic";
}

struct SessionChangedNote;
impl Notification for SessionChangedNote {
    type Params = SessionChanged;
    const METHOD: &'static str = "mirrord/sessionChanged";
}

enum Outgoing {
    Traffic(TrafficNotification),
    Changed(SessionChanged),
    Progress(String, Progress),
}

/// Queues notifications for one pump task, so they reach the client in order.
struct LspNotifier {
    /// daemon --notifications--> pump task (which writes them to stdout)
    outgoing_tx: mpsc::Sender<Outgoing>,
}

impl Notifier for LspNotifier {
    fn traffic(&self, n: TrafficNotification) {
        // A client that does not keep up loses live rows; the history still has them.
        let _ = self.outgoing_tx.try_send(Outgoing::Traffic(n));
    }
    fn session_changed(&self, n: SessionChanged) {
        let _ = self.outgoing_tx.try_send(Outgoing::Changed(n));
    }
    fn progress(&self, token: &str, step: Progress) {
        let _ = self
            .outgoing_tx
            .try_send(Outgoing::Progress(token.to_owned(), step));
    }
}

async fn pump(client: Client, mut outgoing_rx: mpsc::Receiver<Outgoing>) {
    while let Some(note) = outgoing_rx.recv().await {
        match note {
            Outgoing::Traffic(n) => client.send_notification::<TrafficNote>(n).await,
            Outgoing::Changed(n) => client.send_notification::<SessionChangedNote>(n).await,
            Outgoing::Progress(token, step) => {
                let token = NumberOrString::String(token);
                let value = match step {
                    Progress::Begin(title) => {
                        // Clients that do not support server-initiated progress say so here;
                        // they then just ignore the notifications.
                        let _ = client
                            .send_request::<request::WorkDoneProgressCreate>(
                                WorkDoneProgressCreateParams {
                                    token: token.clone(),
                                },
                            )
                            .await;
                        WorkDoneProgress::Begin(WorkDoneProgressBegin {
                            title,
                            cancellable: Some(false),
                            message: None,
                            percentage: None,
                        })
                    }
                    Progress::Report(message) => WorkDoneProgress::Report(WorkDoneProgressReport {
                        cancellable: None,
                        message: Some(message),
                        percentage: None,
                    }),
                    Progress::End(message) => WorkDoneProgress::End(WorkDoneProgressEnd {
                        message: Some(message),
                    }),
                };
                client
                    .send_notification::<notification::Progress>(ProgressParams {
                        token,
                        value: ProgressParamsValue::WorkDone(value),
                    })
                    .await;
            }
        }
    }
}

pub struct Backend {
    client: Client,
    daemon: Arc<Daemon>,
    notifier: Arc<LspNotifier>,
    /// Open configuration documents (uri → text), for completion and hover.
    documents: Mutex<HashMap<Url, String>>,
}

fn rpc_error(e: ApiError) -> RpcError {
    RpcError {
        code: tower_lsp::jsonrpc::ErrorCode::ServerError(1),
        message: e.0.into(),
        data: None,
    }
}

fn offset_of(text: &str, pos: Position) -> usize {
    let mut offset = 0;
    for (i, line) in text.split('\n').enumerate() {
        if i as u32 == pos.line {
            return offset + (pos.character as usize).min(line.chars().count());
        }
        offset += line.chars().count() + 1;
    }
    offset
}

impl Backend {
    async fn check_document(&self, uri: &Url, text: &str) {
        let Ok(path) = uri.to_file_path() else { return };
        if !config_lsp::is_config_document(&path) {
            return;
        }
        let diagnostics = config_lsp::diagnostics(&path, text)
            .into_iter()
            .map(|p| Diagnostic {
                range: Range::new(Position::new(p.line, p.start), Position::new(p.line, p.end)),
                severity: Some(DiagnosticSeverity::ERROR),
                source: Some("mirrord".into()),
                message: p.message,
                ..Default::default()
            })
            .collect();
        self.client
            .publish_diagnostics(uri.clone(), diagnostics, None)
            .await;
    }

    fn document(&self, uri: &Url) -> Option<String> {
        self.documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uri)
            .cloned()
    }

    async fn list_targets(&self, params: ListTargetsParams) -> RpcResult<ListTargetsResult> {
        self.daemon.list_targets(params).map_err(rpc_error)
    }
    async fn verify_config(&self, params: VerifyConfigParams) -> RpcResult<VerifyConfigResult> {
        Ok(self.daemon.verify_config(params))
    }
    async fn start_session(&self, params: StartSessionParams) -> RpcResult<StartSessionResult> {
        self.daemon
            .start_session(STDIO_CLIENT, self.notifier.clone(), params)
            .await
            .map_err(rpc_error)
    }
    async fn stop_session(&self, params: SessionIdParams) -> RpcResult<Empty> {
        self.daemon.stop_session(params).await.map_err(rpc_error)
    }
    async fn list_sessions(
        &self,
        _params: Option<serde_json::Value>,
    ) -> RpcResult<ListSessionsResult> {
        Ok(self.daemon.list_sessions())
    }
    async fn traffic_history(
        &self,
        params: TrafficHistoryParams,
    ) -> RpcResult<TrafficHistoryResult> {
        self.daemon.traffic_history(params).map_err(rpc_error)
    }
}

#[tower_lsp::async_trait]
impl LanguageServer for Backend {
    async fn initialize(&self, _: InitializeParams) -> RpcResult<InitializeResult> {
        Ok(InitializeResult {
            server_info: Some(ServerInfo {
                name: "mirrord-server".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            capabilities: ServerCapabilities {
                text_document_sync: Some(TextDocumentSyncCapability::Kind(
                    TextDocumentSyncKind::FULL,
                )),
                completion_provider: Some(CompletionOptions {
                    trigger_characters: Some(vec!["\"".into(), ":".into()]),
                    ..Default::default()
                }),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                ..Default::default()
            },
        })
    }

    async fn shutdown(&self) -> RpcResult<()> {
        self.daemon.stop_all().await;
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let doc = params.text_document;
        self.documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(doc.uri.clone(), doc.text.clone());
        self.check_document(&doc.uri, &doc.text).await;
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        // Full sync: the last change is the whole document.
        let Some(change) = params.content_changes.into_iter().last() else {
            return;
        };
        let uri = params.text_document.uri;
        self.documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uri.clone(), change.text.clone());
        self.check_document(&uri, &change.text).await;
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&params.text_document.uri);
    }

    async fn completion(&self, params: CompletionParams) -> RpcResult<Option<CompletionResponse>> {
        let uri = params.text_document_position.text_document.uri;
        let Some(text) = self.document(&uri) else {
            return Ok(None);
        };
        let offset = offset_of(&text, params.text_document_position.position);
        let items = config_lsp::completions(&text, offset)
            .into_iter()
            .map(|c| CompletionItem {
                kind: Some(if c.is_key {
                    CompletionItemKind::PROPERTY
                } else {
                    CompletionItemKind::ENUM_MEMBER
                }),
                documentation: c.detail.clone().map(Documentation::String),
                label: c.label,
                ..Default::default()
            })
            .collect();
        Ok(Some(CompletionResponse::Array(items)))
    }

    async fn hover(&self, params: HoverParams) -> RpcResult<Option<Hover>> {
        let uri = params.text_document_position_params.text_document.uri;
        let Some(text) = self.document(&uri) else {
            return Ok(None);
        };
        let offset = offset_of(&text, params.text_document_position_params.position);
        Ok(config_lsp::hover(&text, offset).map(|doc| Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: doc,
            }),
            range: None,
        }))
    }
}

/// Serves the daemon on stdin/stdout until the client goes away; then every session ends.
pub async fn serve_stdio(daemon: Arc<Daemon>) {
    let (outgoing_tx, outgoing_rx) = mpsc::channel(4096);
    let notifier = Arc::new(LspNotifier { outgoing_tx });
    let pump_daemon = daemon.clone();
    let (service, socket) = LspService::build(|client| {
        tokio::spawn(pump(client.clone(), outgoing_rx));
        Backend {
            client,
            daemon: pump_daemon,
            notifier,
            documents: Mutex::new(HashMap::new()),
        }
    })
    .custom_method("mirrord/listTargets", Backend::list_targets)
    .custom_method("mirrord/verifyConfig", Backend::verify_config)
    .custom_method("mirrord/startSession", Backend::start_session)
    .custom_method("mirrord/stopSession", Backend::stop_session)
    .custom_method("mirrord/listSessions", Backend::list_sessions)
    .custom_method("mirrord/trafficHistory", Backend::traffic_history)
    .finish();
    Server::new(tokio::io::stdin(), tokio::io::stdout(), socket)
        .serve(service)
        .await;
    tracing::info!("the client closed stdio; ending its sessions");
    daemon.client_gone(STDIO_CLIENT).await;
}
