//! The stdio transport: JSON-RPC with LSP framing, via tower-lsp. The LSP lifecycle and the
//! configuration-file language features are ordinary LSP; the `mirrord/*` methods are custom
//! methods registered on the same service.

use super::{config_lsp, ApiError, ClientId, Daemon, Notifier, Progress};
use mirrord_protocol::api::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tower_lsp::jsonrpc::{Error as RpcError, Result as RpcResult};
use tower_lsp::lsp_types::notification::Notification;
use tower_lsp::lsp_types::*;
use tower_lsp::{Client, LanguageServer, LspService, Server};

/// Frames queued for stdout (answers and notifications) before writers wait.
const OUT_QUEUE: usize = 256;

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

/// How long the client may take to accept a progress token.
const PROGRESS_CREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the queued notifications to the client, in order. Progress is sent only to a client
/// that declared `window.workDoneProgress` in `initialize`, and only for tokens it accepted
/// (LSP: a server must not use a token whose `window/workDoneProgress/create` failed); a client
/// that does not answer the create in time cannot hold up the notifications behind it.
async fn pump(
    client: Client,
    mut outgoing_rx: mpsc::Receiver<Outgoing>,
    progress_supported: Arc<AtomicBool>,
) {
    let mut accepted_tokens: HashSet<String> = HashSet::new();
    while let Some(note) = outgoing_rx.recv().await {
        match note {
            Outgoing::Traffic(n) => client.send_notification::<TrafficNote>(n).await,
            Outgoing::Changed(n) => client.send_notification::<SessionChangedNote>(n).await,
            Outgoing::Progress(_, _) if !progress_supported.load(Ordering::Relaxed) => {}
            Outgoing::Progress(token, step) => {
                let value = match step {
                    Progress::Begin(title) => {
                        let created = tokio::time::timeout(
                            PROGRESS_CREATE_TIMEOUT,
                            client.send_request::<request::WorkDoneProgressCreate>(
                                WorkDoneProgressCreateParams {
                                    token: NumberOrString::String(token.clone()),
                                },
                            ),
                        )
                        .await;
                        if !matches!(created, Ok(Ok(()))) {
                            tracing::debug!(%token, "the client did not accept the progress token");
                            continue;
                        }
                        accepted_tokens.insert(token.clone());
                        WorkDoneProgress::Begin(WorkDoneProgressBegin {
                            title,
                            cancellable: Some(false),
                            message: None,
                            percentage: None,
                        })
                    }
                    _ if !accepted_tokens.contains(&token) => continue,
                    Progress::Report(message) => WorkDoneProgress::Report(WorkDoneProgressReport {
                        cancellable: None,
                        message: Some(message),
                        percentage: None,
                    }),
                    Progress::End(message) => {
                        accepted_tokens.remove(&token);
                        WorkDoneProgress::End(WorkDoneProgressEnd {
                            message: Some(message),
                        })
                    }
                };
                client
                    .send_notification::<notification::Progress>(ProgressParams {
                        token: NumberOrString::String(token),
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
    /// Whether the client declared `window.workDoneProgress` (shared with the pump).
    progress_supported: Arc<AtomicBool>,
    /// Open configuration documents (uri → text), for completion and hover.
    documents: Mutex<HashMap<Url, String>>,
}

fn rpc_error(e: ApiError) -> RpcError {
    RpcError {
        code: tower_lsp::jsonrpc::ErrorCode::ServerError(1),
        data: serde_json::to_value(e.data()).ok(),
        message: e.message.into(),
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
                severity: Some(match p.severity {
                    config_lsp::Severity::Error => DiagnosticSeverity::ERROR,
                    config_lsp::Severity::Warning => DiagnosticSeverity::WARNING,
                }),
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
        self.daemon.list_targets(params).await.map_err(rpc_error)
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
    async fn initialize(&self, params: InitializeParams) -> RpcResult<InitializeResult> {
        let progress = params
            .capabilities
            .window
            .and_then(|w| w.work_done_progress)
            .unwrap_or(false);
        self.progress_supported.store(progress, Ordering::Relaxed);
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

/// Largest message body accepted from the client (a configuration document is a few KiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Longest header line accepted from the client.
const MAX_HEADER_LINE: u64 = 8 << 10;

/// One complete LSP frame for the client, or the end of the output.
enum Out {
    Frame(Vec<u8>),
    End,
}

fn lsp_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    frame.extend_from_slice(body);
    frame
}

fn error_frame(id: serde_json::Value, code: i64, message: String) -> Vec<u8> {
    let resp = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": code, "message": message},
    });
    lsp_frame(resp.to_string().as_bytes())
}

/// The message to hand to tower-lsp if `body` is a JSON-RPC message it can take; if not, the
/// error response to send instead (-32700 for invalid JSON, -32600 for JSON that is not a
/// JSON-RPC message). `"params": null` (sent by some clients for `shutdown`/`exit`, which
/// tower-lsp refuses with -32602) is passed on as absent params.
fn check_message(body: &[u8]) -> Result<Checked, Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| error_frame(serde_json::Value::Null, -32700, format!("Parse error: {e}")))?;
    let id = value
        .get("id")
        .filter(|id| id.is_string() || id.is_number())
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    // A request or notification has a method; a response an id and a result or an error.
    let shaped = value.get("jsonrpc").and_then(|v| v.as_str()) == Some("2.0")
        && (value.get("method").is_some_and(|m| m.is_string())
            || (value.get("id").is_some()
                && (value.get("result").is_some() || value.get("error").is_some())));
    let null_params = match value.as_object_mut() {
        Some(obj) if obj.get("params").is_some_and(|p| p.is_null()) => {
            obj.remove("params");
            true
        }
        _ => false,
    };
    // tower-lsp's own message type is an untagged enum of these two.
    let is_message = shaped
        && (serde_json::from_value::<tower_lsp::jsonrpc::Request>(value.clone()).is_ok()
            || serde_json::from_value::<tower_lsp::jsonrpc::Response>(value.clone()).is_ok());
    if !is_message {
        return Err(error_frame(id, -32600, "Invalid request".into()));
    }
    let exit = value.get("method").and_then(|m| m.as_str()) == Some("exit");
    let frame = if null_params {
        lsp_frame(value.to_string().as_bytes())
    } else {
        lsp_frame(body)
    };
    Ok(Checked { frame, exit })
}

/// A client message that tower-lsp can take.
struct Checked {
    frame: Vec<u8>,
    /// The `exit` notification: nothing is read after it.
    exit: bool,
}

/// Reads the client's frames from stdin (blocking, on its own thread: a blocking read must not
/// hold up the runtime's shutdown). Valid messages go to tower-lsp, re-framed; anything that
/// would make tower-lsp stop reading (its decoder ends the input stream at the first bad frame)
/// is answered with a JSON-RPC error instead. Returns at end of input.
fn read_client(
    input: impl std::io::Read,
    forward_tx: mpsc::Sender<Vec<u8>>,
    out_tx: mpsc::Sender<Out>,
) {
    use std::io::{BufRead, Read};
    let mut r = std::io::BufReader::new(input);
    loop {
        let mut len: Option<Result<usize, String>> = None;
        let mut seen_header = false;
        loop {
            let mut line = Vec::new();
            match (&mut r).take(MAX_HEADER_LINE).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if seen_header {
                    break;
                }
                continue;
            }
            seen_header = true;
            let line = String::from_utf8_lossy(&line);
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    len = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|e| format!("invalid Content-Length {value:?}: {e}")),
                    );
                }
            }
        }
        let len = match len {
            Some(Ok(n)) if n <= MAX_MESSAGE => n,
            Some(Ok(n)) => {
                // Skip it whole so the next frame is read from its start.
                if std::io::copy(&mut (&mut r).take(n as u64), &mut std::io::sink()).is_err() {
                    return;
                }
                let msg = format!("message of {n} bytes is over the limit of {MAX_MESSAGE}");
                let _ = out_tx.blocking_send(Out::Frame(error_frame(
                    serde_json::Value::Null,
                    -32600,
                    msg,
                )));
                continue;
            }
            Some(Err(msg)) => {
                let _ = out_tx.blocking_send(Out::Frame(error_frame(
                    serde_json::Value::Null,
                    -32700,
                    msg,
                )));
                continue;
            }
            None => {
                let msg = "a message without a Content-Length header".to_owned();
                let _ = out_tx.blocking_send(Out::Frame(error_frame(
                    serde_json::Value::Null,
                    -32700,
                    msg,
                )));
                continue;
            }
        };
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        match check_message(&body) {
            Ok(Checked { frame, exit }) => {
                if forward_tx.blocking_send(frame).is_err() {
                    return;
                }
                // tower-lsp stops serving after `exit` only once it reads the next message or
                // the end of its input: give it the end of input now, so the daemon exits as
                // LSP says it should (and ends the client's sessions on the way out).
                if exit {
                    return;
                }
            }
            Err(reply) => {
                tracing::warn!("answered a malformed message from the client with an error");
                let _ = out_tx.blocking_send(Out::Frame(reply));
            }
        }
    }
}

/// Reads tower-lsp's output frames whole and queues them for stdout.
async fn collect_server_frames(
    output: impl tokio::io::AsyncRead + Unpin,
    out_tx: mpsc::Sender<Out>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut r = tokio::io::BufReader::new(output);
    loop {
        let mut len = None;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                if len.is_some() {
                    break;
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("Content-Length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; len.unwrap_or(0)];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        if out_tx.send(Out::Frame(lsp_frame(&body))).await.is_err() {
            return;
        }
    }
}

/// Writes whole frames to stdout, one at a time, until [`Out::End`].
async fn write_client(mut out_rx: mpsc::Receiver<Out>) {
    use tokio::io::AsyncWriteExt;
    let mut stdout = tokio::io::stdout();
    while let Some(Out::Frame(frame)) = out_rx.recv().await {
        if stdout.write_all(&frame).await.is_err() || stdout.flush().await.is_err() {
            return;
        }
    }
}

/// Serves the daemon on stdin/stdout until the client goes away; then every session ends.
///
/// tower-lsp does not read stdin itself: it stops reading at the first frame it cannot decode,
/// so [`read_client`] stands in front of it and answers malformed frames with JSON-RPC errors,
/// and one writer interleaves those answers with tower-lsp's frames on stdout.
pub async fn serve_stdio(daemon: Arc<Daemon>) {
    // client (stdin) --valid frames--> tower-lsp
    let (forward_tx, mut forward_rx) = mpsc::channel::<Vec<u8>>(64);
    // tower-lsp frames and our error answers --> the stdout writer
    // Bounded: when the client stops reading stdout, this fills, then tower-lsp's output, then
    // the notification queue, whose traffic rows are dropped (the history keeps them); requests
    // wait for their answers to be written. Memory stays bounded either way.
    let (out_tx, out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let (mut server_in, server_stdin) = tokio::io::duplex(64 << 10);
    let (server_stdout, server_out) = tokio::io::duplex(64 << 10);
    {
        let out_tx = out_tx.clone();
        std::thread::spawn(move || read_client(std::io::stdin(), forward_tx, out_tx));
    }
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Some(frame) = forward_rx.recv().await {
            if server_in.write_all(&frame).await.is_err() {
                break;
            }
        }
        // End of the client's input: tower-lsp sees end of file and stops.
        let _ = server_in.shutdown().await;
    });
    let collector = tokio::spawn(collect_server_frames(server_out, out_tx.clone()));
    let writer = tokio::spawn(write_client(out_rx));

    let (outgoing_tx, outgoing_rx) = mpsc::channel(4096);
    let notifier = Arc::new(LspNotifier { outgoing_tx });
    let pump_daemon = daemon.clone();
    let progress_supported = Arc::new(AtomicBool::new(false));
    let (service, socket) = LspService::build(|client| {
        tokio::spawn(pump(
            client.clone(),
            outgoing_rx,
            progress_supported.clone(),
        ));
        Backend {
            client,
            daemon: pump_daemon,
            notifier,
            progress_supported,
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
    Server::new(server_stdin, server_stdout, socket)
        .serve(service)
        .await;
    // Everything tower-lsp wrote reaches the client before we go.
    let _ = collector.await;
    let _ = out_tx.send(Out::End).await;
    let _ = writer.await;
    tracing::info!("the client closed stdio; ending its sessions");
    daemon.client_gone(STDIO_CLIENT).await;
}
