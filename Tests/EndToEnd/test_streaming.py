"""Large bodies stream through with bounded memory in both directions."""
import json
import socket
import threading
import time

from conftest import read_to_close, status_of

MIB = 1024 * 1024


def test_50_mib_upload_streams_through_with_bounded_rss(basic):
    proxy, _ = basic
    size = 50 * MIB
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proxy.rss_kib())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    s.sendall(f"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
    block = b"x" * (256 * 1024)
    for _ in range(size // len(block)):
        s.sendall(block)
    response = read_to_close(s)
    done.set()
    assert status_of(response) == 200
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["body_length"] == size
    assert peak[0] < 64 * 1024, f"peak RSS {peak[0]} KiB"


def test_50_mib_download_to_a_slow_reader_keeps_rss_bounded(basic):
    proxy, _ = basic
    size = 50 * MIB
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(f"GET /?size={size} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".encode())
    received = 0
    head = b""
    peak = 0
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    received = len(head.split(b"\r\n\r\n", 1)[1])
    slow_until = time.time() + 1.0
    while True:
        if time.time() < slow_until:
            time.sleep(0.01)  # the client stalls: the proxy must stop reading the origin, not buffer
            peak = max(peak, proxy.rss_kib())
        try:
            data = s.recv(1024 * 1024)
        except socket.timeout:
            import subprocess
            sockets = subprocess.run(["ss", "-tni"], capture_output=True, text=True).stdout
            raise AssertionError(f"stalled after {received} of {size} bytes\n{sockets}")
        if not data:
            break
        received += len(data)
    s.close()
    assert status_of(head) == 200
    assert received == size, f"received {received} of {size}"
    assert peak < 64 * 1024, f"peak RSS {peak} KiB"


def test_upload_to_a_stalled_upstream_resumes_when_it_reads(proxy_factory):
    """The upstream reads nothing for a second: the proxy must stop reading the client, then resume."""
    import threading
    from conftest import service_yaml
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    size = 8 * MIB
    seen = {}

    def upstream():
        conn, _ = server.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        body = len(data.split(b"\r\n\r\n", 1)[1])
        time.sleep(1.0)
        while body < size:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += len(chunk)
        seen["body"] = body
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        conn.close()

    threading.Thread(target=upstream, daemon=True).start()
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", server.getsockname()[1])]))
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    s.sendall(f"PUT / HTTP/1.1\r\nHost: web\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
    s.sendall(b"y" * size)
    response = read_to_close(s)
    server.close()
    assert status_of(response) == 200 and response.endswith(b"ok")
    assert seen["body"] == size
