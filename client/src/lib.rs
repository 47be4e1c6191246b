//! trainctl's library: connecting to trainerd. The binary's commands and the end-to-end tests both
//! use [`connect_unix`].

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Channel, Endpoint};
use trainerd_proto::v1::trainerd_client::TrainerdClient;

/// A gRPC client of trainerd.
pub type Client = TrainerdClient<InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer TOKEN` to every request when there is a token (TCP); a unix socket
/// needs none (trainerd checks the peer's credentials).
#[derive(Clone, Default)]
pub struct Auth(Option<tonic::metadata::AsciiMetadataValue>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// How to reach trainerd over TCP.
#[derive(Debug, Default, Clone)]
pub struct TcpOptions {
    /// The bearer token.
    pub token: Option<String>,
    /// A PEM CA certificate to verify an `https://` address against.
    pub ca: Option<Vec<u8>>,
}

/// The web page (`trainctl ui`).
pub mod ui;

/// Connects to trainerd's unix socket. The error says where it looked.
pub async fn connect_unix(path: &Path) -> Result<Client, ConnectError> {
    connect_unix_within(path, None).await
}

/// [`connect_unix`], with a deadline on every request's answer (a streaming answer's first
/// message): the end-to-end tests use one, so a trainerd that stops answering fails a test in
/// seconds instead of hanging it.
pub async fn connect_unix_within(path: &Path, deadline: Option<std::time::Duration>) -> Result<Client, ConnectError> {
    let socket = path.to_path_buf();
    // The URI is never used for a unix socket, but must parse.
    let mut endpoint = Endpoint::from_static("http://[::]:50051");
    if let Some(deadline) = deadline {
        endpoint = endpoint.timeout(deadline);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|source| ConnectError { socket: path.to_path_buf(), source })?;
    Ok(TrainerdClient::with_interceptor(channel, Auth::default()))
}

/// Connects to trainerd's TCP gRPC address (`http://127.0.0.1:7070`, or `https://` with TLS).
pub async fn connect_tcp(addr: &str, options: TcpOptions) -> Result<Client, String> {
    let mut endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("--addr {addr:?} is not a URL like http://127.0.0.1:7070: {e}"))?;
    if addr.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &options.ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("cannot use TLS for {addr}: {e}"))?;
    } else if options.ca.is_some() {
        return Err(format!("--ca is for TLS; give an https:// address, not {addr}"));
    }
    let token = match options.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token has characters a header cannot carry; use printable ASCII".to_string())?,
        ),
        None => None,
    };
    let channel = endpoint.connect().await.map_err(|e| {
        use std::error::Error;
        let cause = e.source().map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
        format!("cannot reach trainerd at {addr} ({cause}); start it with `trainerd --listen ADDR`")
    })?;
    Ok(TrainerdClient::with_interceptor(channel, Auth(token)))
}

/// trainerd could not be reached.
#[derive(Debug)]
pub struct ConnectError {
    pub socket: PathBuf,
    pub source: tonic::transport::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::error::Error;
        let cause = self.source.source().map(|s| s.to_string()).unwrap_or_else(|| self.source.to_string());
        write!(
            f,
            "cannot reach trainerd at {} ({cause}); start it with `trainerd --socket {}`, or point \
             trainctl elsewhere with --socket or TRAINERD_SOCKET",
            self.socket.display(),
            self.socket.display()
        )
    }
}

impl std::error::Error for ConnectError {}
