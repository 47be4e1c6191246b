"""Python's grpcio, with default channel options, against a real trainerd (run by
tests/e2e/clients.rs): stubs generated from proto/trainerd.proto by grpcio-tools, as a user would
make them; sync and asyncio; over the unix socket and over TCP with the bearer token.

Each calls DaemonInfo, SubmitJob, WatchJob to the end, GetJob, CancelJob and one refused call with its
code; then the standard health check and reflection (list and describe, without the proto file).

    python grpcio_defaults.py STUBS_DIR SOCKET TCP_ADDR TOKEN_FILE
"""

import asyncio
import sys

STUBS, SOCKET, TCP, TOKEN_FILE = sys.argv[1:5]
sys.path.insert(0, STUBS)

import grpc  # noqa: E402
import trainerd_pb2 as pb  # noqa: E402
import trainerd_pb2_grpc as rpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf.descriptor_pool import DescriptorPool  # noqa: E402

with open(TOKEN_FILE) as f:
    METADATA = (("authorization", "Bearer " + f.read().strip()),)
TERMINAL = {pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def short_job(tag):
    return pb.SubmitJobRequest(name="short-" + tag, command=["/bin/sh", "-c", "echo " + tag], workdir="/tmp")


def long_job(tag):
    return pb.SubmitJobRequest(name="long-" + tag, command=["/bin/sleep", "300"], workdir="/tmp")


def check_sync(target, metadata, tag):
    with grpc.insecure_channel(target) as channel:
        stub = rpc.TrainerdStub(channel)
        info = stub.DaemonInfo(pb.DaemonInfoRequest(), timeout=30, metadata=metadata)
        assert info.api_version.startswith("1."), info
        job = stub.SubmitJob(short_job(tag), timeout=30, metadata=metadata).job
        updates = list(stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=120, metadata=metadata))
        assert updates[0].kind == "snapshot", updates[0]
        assert updates[-1].job.state == pb.JOB_STATE_COMPLETED, updates[-1]
        got = stub.GetJob(pb.GetJobRequest(id=job.id), timeout=30, metadata=metadata)
        assert got.state == pb.JOB_STATE_COMPLETED and got.name == "short-" + tag, got
        running = stub.SubmitJob(long_job(tag), timeout=30, metadata=metadata).job
        cancelled = stub.CancelJob(pb.CancelJobRequest(id=running.id), timeout=30, metadata=metadata)
        for update in stub.WatchJob(pb.WatchJobRequest(id=running.id), timeout=120, metadata=metadata):
            cancelled = update.job
        assert cancelled.state == pb.JOB_STATE_CANCELLED, cancelled
        try:
            stub.GetJob(pb.GetJobRequest(id="fffffffffff0"), timeout=30, metadata=metadata)
            raise AssertionError("an unknown job was found")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, (e.code(), e.details())
            assert "fffffffffff0" in e.details(), e.details()


async def check_async(target, metadata, tag):
    async with grpc.aio.insecure_channel(target) as channel:
        stub = rpc.TrainerdStub(channel)
        info = await stub.DaemonInfo(pb.DaemonInfoRequest(), timeout=30, metadata=metadata)
        assert info.pid > 0, info
        job = (await stub.SubmitJob(short_job(tag), timeout=30, metadata=metadata)).job
        last = None
        async for update in stub.WatchJob(pb.WatchJobRequest(id=job.id), timeout=120, metadata=metadata):
            last = update.job
        assert last.state == pb.JOB_STATE_COMPLETED, last
        got = await stub.GetJob(pb.GetJobRequest(id=job.id), timeout=30, metadata=metadata)
        assert got.state == pb.JOB_STATE_COMPLETED, got
        running = (await stub.SubmitJob(long_job(tag), timeout=30, metadata=metadata)).job
        await stub.CancelJob(pb.CancelJobRequest(id=running.id), timeout=30, metadata=metadata)
        async for update in stub.WatchJob(pb.WatchJobRequest(id=running.id), timeout=120, metadata=metadata):
            last = update.job
        assert last.state == pb.JOB_STATE_CANCELLED, last
        try:
            await stub.PauseJob(pb.PauseJobRequest(id=job.id), timeout=30, metadata=metadata)
            raise AssertionError("a completed job was paused")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, (e.code(), e.details())


def check_standard_services(target, metadata):
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", "trainerd.v1.Trainerd"]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30, metadata=metadata)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (service, reply)
        first = next(iter(health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30, metadata=metadata)))
        assert first.status == health_pb2.HealthCheckResponse.SERVING, first
        try:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=30, metadata=metadata)
            raise AssertionError("an unknown service was healthy")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
        if not metadata:
            # The reflection client sends no metadata of its own: over the unix socket only.
            database = ProtoReflectionDescriptorDatabase(channel)
            services = set(database.get_services())
            assert {"trainerd.v1.Trainerd", "grpc.health.v1.Health"} <= services, services
            pool = DescriptorPool(database)
            methods = {m.name for m in pool.FindServiceByName("trainerd.v1.Trainerd").methods}
            assert {"SubmitJob", "WatchJob", "CancelJob", "DaemonInfo"} <= methods, methods
            fields = pool.FindMessageTypeByName("trainerd.v1.SubmitJobRequest").fields_by_name
            assert fields["idempotency_key"].number == 7, fields


def main():
    unix = "unix://" + SOCKET
    check_sync(unix, (), "unix-sync")
    asyncio.run(check_async(unix, (), "unix-async"))
    check_standard_services(unix, ())
    check_sync(TCP, METADATA, "tcp-sync")
    asyncio.run(check_async(TCP, METADATA, "tcp-async"))
    check_standard_services(TCP, METADATA)
    # Without the token, TCP refuses with UNAUTHENTICATED and says what is missing.
    with grpc.insecure_channel(TCP) as channel:
        try:
            rpc.TrainerdStub(channel).DaemonInfo(pb.DaemonInfoRequest(), timeout=30)
            raise AssertionError("TCP answered without a token")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (e.code(), e.details())
    print("grpcio: all calls as expected")


main()
