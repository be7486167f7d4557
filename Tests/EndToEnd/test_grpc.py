"""gRPC through the waypoint with stacks this project did not write on both ends: a `grpcio` client whose
connection is carried in an HBONE tunnel (as ztunnel carries a pod's outbound connection), a `grpcio` server
behind a Service port named `grpc`. Errors that grpc-core answers trailers-only (one HEADERS frame with
END_STREAM) must reach the client as the status and message the server gave."""
import json
import re
import select
import socket
import threading

import grpc
import pytest
from concurrent import futures

from conftest import service_yaml, wait_for
from test_hbone import VIP, certs, client, hbone_proxy  # noqa: F401 (fixtures)


class GreeterServer:
    """`test.Greeter`: `Say` answers `hi <name>` with trailing metadata, or NOT_FOUND for `missing` (sent before
    any message, so trailers-only); `Count` streams 100 messages."""

    def __init__(self):
        def say(request, context):
            if request == b"missing":
                context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting: \"missing\"")
            context.set_trailing_metadata((("x-trailer", "kept"),))
            return b"hi " + request

        def count(request, context):
            for i in range(100):
                yield b"%d" % i

        handler = grpc.method_handlers_generic_handler("test.Greeter", {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


class HBONEForwarder:
    """Carries each TCP connection accepted on a local port through an HBONE tunnel of its own to `authority`."""

    def __init__(self, open_client, authority):
        self.open_client, self.authority = open_client, authority
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.relay, args=(s,), daemon=True).start()

    def relay(self, s):
        c = self.open_client()
        sid = c.connect(self.authority)
        if c.status(sid) != 200:
            s.close()
            return
        delivered, local_open = 0, True
        try:
            while True:
                watched = [c.sock] + ([s] if local_open else [])
                ready = [c.sock] if c.sock.pending() else select.select(watched, [], [], 30)[0]
                if not ready:
                    return
                if s in ready:
                    data = s.recv(65536)
                    local_open = bool(data)
                    c.send(sid, data, end_stream=not data)
                if c.sock in ready:
                    if not c.pump():
                        return
                    got = c.data.get(sid, b"")
                    if len(got) > delivered:
                        s.sendall(bytes(got[delivered:]))
                        delivered = len(got)
                    if sid in c.ended or sid in c.resets:
                        return
        except OSError:
            return
        finally:
            s.close()
            c.close()


@pytest.fixture
def greeter():
    server = GreeterServer()
    yield server
    server.server.stop(None)


def test_grpcio_calls_and_trailers_only_errors_pass_through(hbone_proxy, certs, greeter):
    proxy = hbone_proxy(service_yaml("web", [("127.0.0.1", greeter.port)], cluster_ip=VIP, port_name="grpc"))
    forwarder = HBONEForwarder(lambda: client(proxy, certs), f"{VIP}:80")
    with grpc.insecure_channel(f"127.0.0.1:{forwarder.port}", options=[("grpc.default_authority", "web")]) as channel:
        say = channel.unary_unary("/test.Greeter/Say")
        reply, call = say.with_call(b"yo", timeout=10)
        assert reply == b"hi yo"
        assert ("x-trailer", "kept") in call.trailing_metadata()

        with pytest.raises(grpc.RpcError) as failure:
            say(b"missing", timeout=10)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
        assert failure.value.details() == "no such greeting: \"missing\""

        assert list(channel.unary_stream("/test.Greeter/Count")(b"", timeout=10)) == [b"%d" % i for i in range(100)]

    metrics = proxy.metrics()
    series = {k: v for k, v in metrics.items() if k.startswith("istio_requests_total{") and 'request_protocol="grpc"' in k}
    by_status = {re.search(r'grpc_response_status="(\d*)"', k).group(1): v for k, v in series.items()}
    assert by_status == {"0": 2, "5": 1}, series
    assert all('response_code="200"' in k for k in series), series
    # The histograms keep Istio's labels without grpc_response_status.
    assert not any("grpc_response_status" in k for k in metrics if k.startswith("istio_request_duration_milliseconds"))

    line = wait_for(r'\{[^\n]*"grpc_status":5[^\n]*\n', proxy.stdout_path).group(0)
    entry = json.loads(line)
    assert (entry["path"], entry["response_code"], entry["grpc_message"]) == ("/test.Greeter/Say", 200, "no such greeting: \"missing\"")
