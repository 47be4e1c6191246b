//! The gRPC face of [`Api`]. The only place that knows tonic's types, and the one place where an
//! [`ApiError`] becomes a `tonic::Status`.

use super::{Api, ApiError};
use crate::access::{Access, Caller};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::trainerd_server::Trainerd;
use trainerd_proto::v1::trainerd_server::TrainerdServer;

/// The tonic service.
pub struct GrpcService {
    pub api: Arc<Api>,
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let message = e.to_string();
        match e {
            ApiError::NotFound(_) => Status::not_found(message),
            ApiError::InvalidArgument { .. } => Status::invalid_argument(message),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(message),
            ApiError::Unavailable(_) => Status::unavailable(message),
            ApiError::PermissionDenied(_) => Status::permission_denied(message),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(message),
            ApiError::Internal(_) => Status::internal(message),
        }
    }
}

/// The largest request a client may send (a submission's command and environment are capped far
/// below this; see `Api::validate`).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Every service one listener serves, each behind the access check: trainerd's API (requests over
/// [`MAX_REQUEST_BYTES`] refused by tonic), the standard `grpc.health.v1.Health`, and server reflection
/// (`grpc.reflection.v1`, and `v1alpha` for the clients that only speak it, grpcio's among them).
pub fn routes(api: Arc<Api>, health: &Health) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let gate = Gate { socket: api.shared.config().socket.display().to_string(), shared: api.shared.clone() };
    let service = TrainerdServer::new(GrpcService { api }).max_decoding_message_size(MAX_REQUEST_BYTES);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(trainerd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok(tonic::service::Routes::new(InterceptedService::new(service, gate.clone()))
        .add_service(InterceptedService::new(health.service.clone(), gate.clone()))
        .add_service(InterceptedService::new(reflection().build_v1()?, gate.clone()))
        .add_service(InterceptedService::new(reflection().build_v1alpha()?, gate)))
}

/// Why a gRPC listener could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the TLS certificate or key is not usable: {0}")]
    Tls(tonic::transport::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves every route on the unix socket until `stop` resolves, in a task of its own. On a runtime
/// worker the accept loop spawns each connection's task onto the worker it runs on; from the thread
/// that blocks on the runtime (trainerd's main), every new client cost two thread wake-ups first:
/// the main thread woken for the accept, a worker woken for the connection (`trainctl get` is one
/// connection per call).
pub fn serve_unix(
    api: Arc<Api>,
    health: &Health,
    listener: tokio::net::UnixListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), ServeError>>, ServeError> {
    let router = tonic::transport::Server::builder().add_routes(routes(api, health)?);
    Ok(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        router.serve_with_incoming_shutdown(incoming, stop).await?;
        Ok(())
    }))
}

/// Serves every route on TCP (with TLS when `tls` is given) until `stop` resolves, in a task of its
/// own; an error after the start is logged.
pub fn serve_tcp(
    api: Arc<Api>,
    health: &Health,
    listener: tokio::net::TcpListener,
    tls: Option<&crate::config::Tls>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert, &tls.key);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).map_err(ServeError::Tls)?;
    }
    let router = builder.add_routes(routes(api, health)?);
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!("the TCP gRPC server failed: {e}");
        }
    });
    Ok(())
}

/// The standard health service's state: NOT_SERVING until trainerd has restored and reconciled its
/// jobs, SERVING until it begins to shut down, NOT_SERVING again from then on. Reported for the
/// server as a whole (service name "") and for `trainerd.v1.Trainerd`.
pub struct Health {
    reporter: tonic_health::server::HealthReporter,
    service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
}

impl Health {
    /// A health service that reports NOT_SERVING.
    pub async fn new() -> Health {
        let reporter = tonic_health::server::HealthReporter::new();
        let service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        let health = Health { reporter, service };
        health.set(false).await;
        health
    }

    /// Reports SERVING (`true`) or NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        use tonic_health::ServingStatus::{NotServing, Serving};
        let status = if serving { Serving } else { NotServing };
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(TRAINERD_SERVICE, status).await;
    }

    /// Another handle on the same state.
    pub fn reporter(&self) -> Health {
        Health { reporter: self.reporter.clone(), service: self.service.clone() }
    }
}

/// The full name of trainerd's own service, as health checks and reflection name it.
const TRAINERD_SERVICE: &str = <TrainerdServer<GrpcService> as tonic::server::NamedService>::NAME;

/// The interceptor that runs the access check and leaves the [`Caller`] in the request's extensions.
#[derive(Clone)]
pub struct Gate {
    shared: Arc<crate::shared::Shared>,
    socket: String,
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = admit(&self.shared.config().access, &req, &self.socket)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The access check: a unix peer by its credentials, a TCP client by its bearer token.
fn admit(access: &Access, req: &Request<()>, socket: &str) -> Result<Caller, Status> {
    if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
        let Some(cred) = info.peer_cred else {
            return Err(Status::permission_denied("the peer's credentials are unknown"));
        };
        access.check_local(cred.uid(), cred.gid(), cred.pid(), socket).map_err(Status::permission_denied)?;
        return Ok(Caller::Local { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() });
    }
    let peer = req.remote_addr();
    let header = req.metadata().get("authorization").map(|v| v.as_bytes());
    access.check_token(header, peer).map_err(Status::unauthenticated)?;
    Ok(Caller::Remote { addr: peer })
}

/// Who is asking, as the interceptor found it.
fn caller<T>(req: &Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Remote { addr: None })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Trainerd for GrpcService {
    async fn submit_job(&self, req: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let by = caller(&req);
        Ok(Response::new(self.api.submit(req.into_inner(), &by).await?))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.api.get(&req.into_inner().id)?))
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        Ok(Response::new(self.api.list(req.into_inner())?))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(&self, req: Request<pb::WatchJobRequest>) -> Result<Response<WatchStream>, Status> {
        let mut updates = self.api.watch(&req.into_inner().id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(update) = updates.next().await {
                // A client that went away ends the task; nothing else notices.
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        Ok(Response::new(self.api.events(&req.into_inner().id)?))
    }

    type StreamLogsStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = req.into_inner();
        let rx = self.api.logs(&req.id, req.follow, req.tail_bytes)?;
        let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let by = caller(&req).to_string();
        Ok(Response::new(self.api.cancel(&req.into_inner().id, by).await?))
    }

    async fn retry_job(&self, req: Request<pb::RetryJobRequest>) -> Result<Response<pb::Job>, Status> {
        let by = caller(&req).to_string();
        Ok(Response::new(self.api.retry(req.into_inner(), by).await?))
    }

    async fn remove_jobs(
        &self,
        req: Request<pb::RemoveJobsRequest>,
    ) -> Result<Response<pb::RemoveJobsResponse>, Status> {
        let by = caller(&req).to_string();
        Ok(Response::new(self.api.remove(req.into_inner(), by).await?))
    }

    async fn disk_usage(&self, _: Request<pb::DiskUsageRequest>) -> Result<Response<pb::DiskUsageResponse>, Status> {
        Ok(Response::new(self.api.disk_usage().await?))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        Ok(Response::new(self.api.metrics(req.into_inner()).await?))
    }

    async fn pause_job(&self, req: Request<pb::PauseJobRequest>) -> Result<Response<pb::Job>, Status> {
        let by = caller(&req).to_string();
        Ok(Response::new(self.api.pause(&req.into_inner().id, by).await?))
    }

    async fn resume_job(&self, req: Request<pb::ResumeJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.api.resume(&req.into_inner().id).await?))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(self.api.health()?))
    }

    async fn reconcile(&self, _: Request<pb::ReconcileRequest>) -> Result<Response<pb::ReconcileResponse>, Status> {
        Ok(Response::new(self.api.reconcile().await?))
    }

    async fn daemon_info(&self, _: Request<pb::DaemonInfoRequest>) -> Result<Response<pb::DaemonInfoResponse>, Status> {
        Ok(Response::new(self.api.info()))
    }
}
