"""
A discovery handler written from discovery.proto alone (Python, grpcio), to check that Spindle's
agent speaks Akri's v0 protocol and not just its own SDK's dialect.

    python handler.py <stubs dir> <registration socket> <own socket> <name>

Commands on stdin, one per line:
    devices <json list of {"id", "properties"}>   stream this list (the full current set)
    register                                      register again
The handler prints "registered" once it has registered and "discover <details>" for each
Discover call. It never exits on its own: the test kills it.
"""
import json
import os
import sys
import threading
import queue

stubs, registration_socket, own_socket, name = sys.argv[1:5]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from concurrent import futures  # noqa: E402
import discovery_pb2 as pb  # noqa: E402
import discovery_pb2_grpc as rpc  # noqa: E402

current = []
listeners = []
lock = threading.Lock()


def say(*words):
    print(*words, flush=True)


class Handler(rpc.DiscoveryHandlerServicer):
    def Discover(self, request, context):
        say("discover", json.dumps(request.discovery_details))
        q = queue.Queue()
        with lock:
            listeners.append(q)
            q.put(list(current))
        try:
            while context.is_active():
                try:
                    devices = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                yield pb.DiscoverResponse(
                    devices=[pb.Device(id=d["id"], properties=d.get("properties", {})) for d in devices]
                )
        finally:
            with lock:
                listeners.remove(q)


def register():
    with grpc.insecure_channel("unix:" + registration_socket) as channel:
        rpc.RegistrationStub(channel).RegisterDiscoveryHandler(
            pb.RegisterDiscoveryHandlerRequest(
                name=name,
                endpoint=own_socket,
                endpoint_type=pb.RegisterDiscoveryHandlerRequest.EndpointType.UDS,
                shared=True,
            ),
            timeout=5,
        )
    say("registered")


if os.path.exists(own_socket):
    os.unlink(own_socket)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
rpc.add_DiscoveryHandlerServicer_to_server(Handler(), server)
server.add_insecure_port("unix:" + own_socket)
server.start()
register()

for line in sys.stdin:
    command, _, rest = line.strip().partition(" ")
    if command == "devices":
        with lock:
            current = json.loads(rest)
            for q in listeners:
                q.put(list(current))
    elif command == "register":
        register()
