//! trainctl's library: connecting to trainerd. The binary's commands and the end-to-end tests both
//! use [`connect_unix`].

use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint};
use trainerd_proto::v1::trainerd_client::TrainerdClient;

/// A gRPC client of trainerd.
pub type Client = TrainerdClient<Channel>;

/// Connects to trainerd's unix socket. The error says where it looked.
pub async fn connect_unix(path: &Path) -> Result<Client, ConnectError> {
    let socket = path.to_path_buf();
    // The URI is never used for a unix socket, but must parse.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|source| ConnectError { socket: path.to_path_buf(), source })?;
    Ok(TrainerdClient::new(channel))
}

/// Connects to trainerd's TCP gRPC address (`http://127.0.0.1:7070`).
pub async fn connect_tcp(addr: &str) -> Result<Client, String> {
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("--addr {addr:?} is not a URL like http://127.0.0.1:7070: {e}"))?;
    let channel = endpoint.connect().await.map_err(|e| {
        use std::error::Error;
        let cause = e.source().map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
        format!("cannot reach trainerd at {addr} ({cause}); start it with `trainerd --listen ADDR`")
    })?;
    Ok(TrainerdClient::new(channel))
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
