//! The gRPC face of [`Api`]. The only place that knows tonic's types, and the one place where an
//! [`ApiError`] becomes a `tonic::Status`.

use super::{Api, ApiError};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use trainerd_proto::v1 as pb;
use trainerd_proto::v1::trainerd_server::Trainerd;

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
            ApiError::Internal(_) => Status::internal(message),
        }
    }
}

/// Who is asking: the peer's uid on a unix socket.
fn caller<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| format!("uid {}", cred.uid()))
        .unwrap_or_else(|| "an unidentified client".into())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Trainerd for GrpcService {
    async fn submit_job(&self, req: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        Ok(Response::new(self.api.submit(req.into_inner()).await?))
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
        let by = caller(&req);
        Ok(Response::new(self.api.cancel(&req.into_inner().id, by).await?))
    }

    async fn pause_job(&self, req: Request<pb::PauseJobRequest>) -> Result<Response<pb::Job>, Status> {
        let by = caller(&req);
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
