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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Cases per property: `MIRRORD_FUZZ_CASES` (`scripts/fuzz`), else what CI can afford.
    fn cases() -> u32 {
        std::env::var("MIRRORD_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000)
    }

    /// A reader that hands out its bytes in the pieces the cuts make (short reads).
    struct Pieces {
        data: Vec<u8>,
        cuts: Vec<usize>,
        pos: usize,
    }

    impl std::io::Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let next_cut = self
                .cuts
                .iter()
                .copied()
                .find(|c| *c > self.pos)
                .unwrap_or(self.data.len());
            let n = (next_cut - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// Runs the frame reader over `bytes`; returns the frames it forwards to tower-lsp and the
    /// error frames it answers with itself.
    fn read_all(bytes: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        // Room for every frame the input could hold: the reader never waits on a full queue.
        let room = bytes.len() + 16;
        let (forward_tx, mut forward_rx) = mpsc::channel(room);
        let (out_tx, mut out_rx) = mpsc::channel(room);
        read_client(
            Pieces {
                data: bytes.to_vec(),
                cuts,
                pos: 0,
            },
            forward_tx,
            out_tx,
        );
        let mut forwarded = Vec::new();
        while let Ok(f) = forward_rx.try_recv() {
            forwarded.push(f);
        }
        let mut answered = Vec::new();
        while let Ok(Out::Frame(f)) = out_rx.try_recv() {
            answered.push(f);
        }
        (forwarded, answered)
    }

    /// The JSON body of one LSP frame the reader produced (it must be well-formed).
    fn body_of(frame: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(frame).expect("frames are UTF-8 headers");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header and a body");
        let len: usize = head
            .strip_prefix("Content-Length: ")
            .expect("a Content-Length header")
            .parse()
            .expect("a number");
        assert_eq!(len, body.len(), "Content-Length matches the body");
        serde_json::from_str(body).expect("a JSON body")
    }

    fn request(id: u64, method: &str) -> Vec<u8> {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{}}}}"#);
        lsp_frame(body.as_bytes())
    }

    #[derive(Debug, Clone)]
    enum Edit {
        Flip(usize, u8),
        Insert(usize, u8),
        Remove(usize),
        Truncate(usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Remove),
            any::<usize>().prop_map(Edit::Truncate),
        ]
    }

    fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        // Header bytes and digits are where a reader goes wrong.
        const SPECIAL: &[u8] = b"\r\n:{}\"0123456789 ";
        for e in edits {
            let n = v.len().max(1);
            match *e {
                Edit::Flip(i, b) if !v.is_empty() => v[i % n] = SPECIAL[b as usize % SPECIAL.len()],
                Edit::Insert(i, b) => {
                    v.insert(i % (v.len() + 1), SPECIAL[b as usize % SPECIAL.len()])
                }
                Edit::Remove(i) if !v.is_empty() => {
                    v.remove(i % n);
                }
                Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
                _ => {}
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Well-formed requests arrive whole and in order however the stream is cut.
        #[test]
        fn valid_frames_pass_whole_however_they_are_cut(
            count in 1..6usize,
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for i in 0..count {
                stream.extend(request(i as u64, "mirrord/listSessions"));
            }
            let (forwarded, answered) = read_all(&stream, &cuts);
            prop_assert!(answered.is_empty());
            prop_assert_eq!(forwarded.len(), count);
            for (i, f) in forwarded.iter().enumerate() {
                prop_assert_eq!(&body_of(f)["id"], &serde_json::json!(i));
            }
        }

        /// Edited streams never panic the reader, and everything it emits is a well-formed
        /// frame: a request for tower-lsp, or a JSON-RPC error answer.
        #[test]
        fn edited_streams_only_yield_well_formed_frames(
            count in 1..4usize,
            edits in prop::collection::vec(edit(), 1..10),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = Vec::new();
            for i in 0..count {
                stream.extend(request(i as u64, "mirrord/listSessions"));
            }
            let (forwarded, answered) = read_all(&apply(stream, &edits), &cuts);
            for f in &forwarded {
                prop_assert_eq!(&body_of(f)["jsonrpc"], "2.0");
            }
            for a in &answered {
                let b = body_of(a);
                prop_assert!(b["error"]["code"].is_i64(), "{b}");
            }
        }

        #[test]
        fn random_bytes_never_panic_the_reader(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
            let _ = read_all(&bytes, &[bytes.len() / 3]);
        }
    }
}
