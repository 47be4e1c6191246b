"""A client of trainerd's gRPC API, for notebooks and scripts::

    import trainerd

    client = trainerd.Client()                 # the socket trainctl would use
    job = client.submit(["python", "train.py"], name="resnet", checkpoint_glob="out/ckpt-*",
                        resume_arg="--resume {checkpoint}")
    for update in client.watch(job.id):        # until the job ends
        print(update.job.step, update.job.loss)
    client.cancel(job.id)

Requests and answers are the generated protobuf messages of ``proto/trainerd.proto`` (``Job``,
``JobUpdate``, ``HealthResponse``...), built with this package: every field the API has is here, by
its proto name. Errors are :class:`TrainerdError` subclasses carrying the gRPC code and trainerd's
message, which says what to do.

Needs grpcio (a dependency of the package); the trainer side of the package does not import this.
"""

import os
import shutil

import grpc

from ._grpc import trainerd_pb2 as pb
from ._grpc import trainerd_pb2_grpc as rpc

__all__ = [
    "AlreadyExists",
    "Client",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "TrainerdError",
    "Unauthenticated",
    "Unavailable",
    "pb",
]


class TrainerdError(Exception):
    """A refused or failed call: ``code`` is the ``grpc.StatusCode``, ``message`` trainerd's words."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code.name.lower(), message))
        self.code = code
        self.message = message


class NotFound(TrainerdError):
    """No job has that id."""


class InvalidArgument(TrainerdError):
    """A request field is wrong; the message names it and says what is allowed."""


class FailedPrecondition(TrainerdError):
    """The job's state does not allow it (pausing a completed job, resuming a running one)."""


class PermissionDenied(TrainerdError):
    """trainerd does not serve this user (its allow-users/allow-groups)."""


class Unauthenticated(TrainerdError):
    """A TCP call without the right bearer token."""


class ResourceExhausted(TrainerdError):
    """trainerd's state dir is short of space, or a request is too large."""


class Unavailable(TrainerdError):
    """trainerd is not reachable, not ready, or cannot write its store right now; try again."""


class AlreadyExists(TrainerdError):
    """The thing to create exists already."""


_ERRORS = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
}


def _error(e):
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = e.details() if hasattr(e, "details") else str(e)
    return _ERRORS.get(code, TrainerdError)(code, message or "")


def default_socket():
    """The socket trainctl looks for: ``$TRAINERD_SOCKET``, else trainerd's default (root:
    /run/trainerd/trainerd.sock; others: $XDG_RUNTIME_DIR/trainerd/trainerd.sock)."""
    if os.environ.get("TRAINERD_SOCKET"):
        return os.environ["TRAINERD_SOCKET"]
    if os.geteuid() == 0:
        return "/run/trainerd/trainerd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.environ.get("HOME", "/tmp"), ".local/run")
    return os.path.join(runtime, "trainerd", "trainerd.sock")


_STATES = {
    name[len("JOB_STATE_"):].lower(): value
    for name, value in pb.JobState.items()
    if name != "JOB_STATE_UNSPECIFIED"
}


def state_word(state):
    """A ``JobState`` value as trainctl prints it (``running``, ``completed``...)."""
    return pb.JobState.Name(state)[len("JOB_STATE_"):].lower()


class _Bearer(grpc.AuthMetadataPlugin):
    def __init__(self, token):
        self._token = token

    def __call__(self, context, callback):
        callback((("authorization", "Bearer " + self._token),), None)


class Client:
    """A connection to trainerd.

    ``socket``: its unix socket (default: :func:`default_socket`). ``target``: a TCP address
    instead, ``host:port``; with ``token`` (or ``token_file``) and, beyond loopback, ``ca`` (a PEM
    file) for TLS. ``timeout``: seconds each unary call may take.
    """

    def __init__(self, socket=None, *, target=None, token=None, token_file=None, ca=None, timeout=30.0):
        if target and socket:
            raise ValueError("give socket or target, not both")
        if token_file:
            with open(token_file) as f:
                token = f.read().strip()
        self.timeout = timeout
        if target:
            if ca:
                with open(ca, "rb") as f:
                    credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
                if token:
                    credentials = grpc.composite_channel_credentials(
                        credentials, grpc.metadata_call_credentials(_Bearer(token))
                    )
                self._channel = grpc.secure_channel(target, credentials)
            else:
                self._metadata = (("authorization", "Bearer " + token),) if token else ()
                self._channel = grpc.insecure_channel(target)
            self.address = target
        else:
            self.address = socket or default_socket()
            self._channel = grpc.insecure_channel("unix://" + os.path.abspath(self.address))
        if not hasattr(self, "_metadata"):
            self._metadata = ()
        self._stub = rpc.TrainerdStub(self._channel)

    def close(self):
        """Closes the channel."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise _error(e) from None

    def _stream(self, method, request):
        try:
            for item in getattr(self._stub, method)(request, metadata=self._metadata):
                yield item
        except grpc.RpcError as e:
            raise _error(e) from None

    def submit(self, command, *, env=None, workdir=None, **fields):
        """Submits a job and returns its ``Job``. ``command``: the program and its arguments (a
        relative program path is made absolute from here, as trainctl does). ``env``: a dict.
        ``workdir``: default the current directory. Every other SubmitJobRequest field by its proto
        name: ``name``, ``gpus``, ``priority``, ``idempotency_key`` (the same key returns the same job),
        ``max_restarts``, ``on_failure``, ``heartbeat_timeout_ms``, ``protocol``, ``checkpoint_glob``...
        """
        known = set(pb.SubmitJobRequest.DESCRIPTOR.fields_by_name) - {"command", "env", "workdir"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError("unknown submit field(s) %s; SubmitJobRequest has: %s" % (unknown, sorted(known)))
        if isinstance(command, str):
            raise TypeError("command is a list of the program and its arguments, like ['python', 'train.py']")
        command = list(command)
        if command and os.sep in command[0] and not os.path.isabs(command[0]):
            command[0] = os.path.abspath(command[0])
        elif command and os.sep not in command[0]:
            command[0] = shutil.which(command[0]) or command[0]
        request = pb.SubmitJobRequest(
            command=command,
            workdir=os.path.abspath(workdir or os.getcwd()),
            env=[pb.EnvVar(name=k, value=str(v)) for k, v in sorted((env or {}).items())],
            **fields,
        )
        return self._call("SubmitJob", request).job

    def get(self, id):
        """The job with this id (its live progress included)."""
        return self._call("GetJob", pb.GetJobRequest(id=id))

    def list(self, states=(), name="", limit=0):
        """Jobs, newest first: ``states`` as words (``["running", "queued"]``), ``name`` exact, at
        most ``limit`` (0: all, fetched page by page)."""
        try:
            wanted = [_STATES[s] for s in states]
        except KeyError as e:
            raise ValueError("unknown state %s; one of %s" % (e, sorted(_STATES))) from None
        jobs, token = [], ""
        while True:
            page = self._call("ListJobs", pb.ListJobsRequest(states=wanted, name=name, page_token=token))
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token or (limit and len(jobs) >= limit):
                return jobs[:limit] if limit else jobs

    def watch(self, id):
        """Yields ``JobUpdate`` messages (``kind`` is ``snapshot``, ``state`` or ``progress``) until
        the job ends."""
        return self._stream("WatchJob", pb.WatchJobRequest(id=id))

    def wait(self, id):
        """Waits until the job ends and returns its final ``Job``."""
        last = None
        for update in self.watch(id):
            last = update.job
        return self.get(id) if last is None else last

    def events(self, id):
        """The job's events, oldest first (``at`` unix seconds, ``kind``, ``message``)."""
        return list(self._call("ListEvents", pb.ListEventsRequest(id=id)).events)

    def logs(self, id, follow=False, tail_bytes=0):
        """Yields ``(stream, bytes)`` pairs, ``stream`` being ``"stdout"`` or ``"stderr"``: each log's
        tail (``tail_bytes``, 0: 64 KiB), then with ``follow`` what is written until the job ends."""
        for chunk in self._stream("StreamLogs", pb.StreamLogsRequest(id=id, follow=follow, tail_bytes=tail_bytes)):
            yield chunk.stream, chunk.data

    def cancel(self, id):
        """Cancels the job (its trainer is stopped); returns the job."""
        return self._call("CancelJob", pb.CancelJobRequest(id=id))

    def pause(self, id):
        """Asks the trainer to checkpoint and exit; the job becomes ``paused``. Returns the job."""
        return self._call("PauseJob", pb.PauseJobRequest(id=id))

    def resume(self, id):
        """Queues a paused job again; it continues from its checkpoint. Returns the job."""
        return self._call("ResumeJob", pb.ResumeJobRequest(id=id))

    def retry(self, id, from_start=False, request_key=""):
        """Runs a failed or cancelled job again from its latest checkpoint (same id); ``from_start``
        when it has none. A repeated ``request_key`` queues it once. Returns the job."""
        return self._call("RetryJob", pb.RetryJobRequest(id=id, from_start=from_start, request_key=request_key))

    def remove(self, *ids, keep_final_checkpoint=False):
        """Removes finished jobs (records, logs, checkpoints); returns the ``RemovedJob`` list. Nothing
        is removed when one of them has not finished (``FailedPrecondition``)."""
        request = pb.RemoveJobsRequest(ids=list(ids), keep_final_checkpoint=keep_final_checkpoint)
        return list(self._call("RemoveJobs", request).removed)

    def disk_usage(self):
        """The disk each job uses (``DiskUsageResponse``: ``jobs`` largest first, ``total_bytes``,
        ``state_dir_free_bytes``)."""
        return self._call("DiskUsage", pb.DiskUsageRequest())

    def metrics(self, id, names=(), from_step=0, to_step=None, max_points=0):
        """A job's metric history as ``{name: [(step, value), ...]}`` in step order (a folded span of
        older steps gives its mean), at most ``max_points`` per name (0: trainerd's 1000), extremes
        kept. ``GetMetricsResponse`` itself: ``metrics_response``."""
        response = self.metrics_response(id, names, from_step, to_step, max_points)
        return {s.name: [(p.step, p.value) for p in s.samples] for s in response.series}

    def metrics_response(self, id, names=(), from_step=0, to_step=None, max_points=0):
        """``GetMetrics``: the samples with their attempt, time and, for folded spans, min and max."""
        request = pb.GetMetricsRequest(id=id, names=list(names), from_step=from_step, max_points=max_points)
        if to_step is not None:
            request.to_step = to_step
        return self._call("GetMetrics", request)

    def health(self):
        """trainerd's ``HealthResponse`` (``status`` ok, divergent or degraded, with the cause)."""
        return self._call("Health", pb.HealthRequest())

    def info(self):
        """trainerd's ``DaemonInfoResponse`` (version, API version, pid, slots...)."""
        return self._call("DaemonInfo", pb.DaemonInfoRequest())
