"""ServiceEntry `resolution: NONE` (passthrough), black-box: each tunnel's requests go to the address the tunnel
named (Envoy's original destination), HTTP and TCP alike, and never to another address of the entry; a request
with no tunnel has no original destination (503). The two addresses are loopback aliases, each with its own
server on the same port."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port, http_request
from hbone import get
from test_hbone import certs, client, hbone_proxy  # noqa: F401 (fixtures)


class NamedOrigin:
    """An HTTP server on `ip:port` answering every request with its own name and the path."""

    def __init__(self, ip, port, name):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps({"origin": name, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class NamedEcho:
    """A TCP server on `ip:port` that sends its name, then echoes."""

    def __init__(self, ip, port, name):
        self.listener = socket.create_server((ip, port))

        def serve(conn):
            with conn:
                conn.sendall(name.encode() + b":")
                while data := conn.recv(4096):
                    conn.sendall(data)

        def accept():
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()
        threading.Thread(target=accept, daemon=True).start()


@pytest.fixture
def egress(hbone_proxy):
    """ServiceEntry api.example.com with addresses 127.0.0.2 and 127.0.0.3, an HTTP port and a TLS (TCP) port,
    and a server on each address and port."""
    http_port, tcp_port = free_port(), free_port()
    for ip in ("127.0.0.2", "127.0.0.3"):
        NamedOrigin(ip, http_port, ip)
        NamedEcho(ip, tcp_port, ip)
    config = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [api.example.com]
  addresses: [127.0.0.2, 127.0.0.3]
  ports: [{{number: {http_port}, name: http, protocol: HTTP}}, {{number: {tcp_port}, name: tls, protocol: TLS}}]
"""
    return hbone_proxy(config), http_port, tcp_port


def test_each_tunnel_reaches_the_address_it_named(egress, certs):
    proxy, http_port, _ = egress
    c = client(proxy, certs)
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
        sid = c.connect(f"{ip}:{http_port}")
        assert c.status(sid) == 200
        for i in range(3):
            response = c.http(sid, get(f"/items/{i}", host="api.example.com"))
            assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
            assert json.loads(response.split(b"\r\n\r\n", 1)[1]) == {"origin": ip, "path": f"/items/{i}"}
    c.close()


def test_a_tcp_tunnel_passes_through_to_its_address(egress, certs):
    proxy, _, tcp_port = egress
    c = client(proxy, certs)
    sid = c.connect(f"127.0.0.3:{tcp_port}")
    assert c.status(sid) == 200
    c.send(sid, b"ping")
    assert c.wait(lambda: bytes(c.data.get(sid, b"")) == b"127.0.0.3:ping")
    c.close()


def test_without_a_tunnel_there_is_no_original_destination(egress):
    proxy, http_port, _ = egress
    status, _, _ = http_request(proxy.port, "GET", "/", host=f"api.example.com:{http_port}")
    assert status == 503
