"""Prints each status the standard health service's Watch sends for the server as a whole (""),
one line each, until the stream ends (run by tests/e2e/clients.rs).

    python health_watch.py SOCKET
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

with grpc.insecure_channel("unix://" + sys.argv[1]) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        for reply in stub.Watch(health_pb2.HealthCheckRequest(service="")):
            print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), flush=True)
    except grpc.RpcError as e:
        print("ended", e.code().name, flush=True)
