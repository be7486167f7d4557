"""Bad input from clients and upstreams: the exact status, and the proxy still serves the next request."""
import socket
import threading

import pytest

from conftest import http_request, raw_exchange, read_to_close, service_yaml, status_of

BAD_REQUESTS = [
    ("head over 60 KiB", b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n", 431),
    ("many headers", b"GET / HTTP/1.1\r\nHost: web\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    ("content-length and transfer-encoding", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("differing content-lengths", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("non-numeric content-length", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("space in header name", b"GET / HTTP/1.1\r\nHost: web\r\nX A: b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost: web\r\nX-A : b\r\n\r\n", 400),
    ("NUL in header value", b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\x00b\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: web\r\nX-A: a\rb\r\n\r\n", 400),
    ("missing host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: web\r\nHost: web\r\n\r\n", 400),
    ("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("unknown transfer-encoding", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("transfer-encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("unknown expectation", b"GET / HTTP/1.1\r\nHost: web\r\nExpect: teapot\r\n\r\n", 417),
    ("CONNECT on the plaintext listener", b"CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n", 405),
    ("malformed chunk size", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
]


@pytest.mark.parametrize("name,payload,status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_the_proxy_keeps_serving(basic, name, payload, status):
    proxy, _ = basic
    response = raw_exchange(proxy.port, payload)
    assert status_of(response) == status, response[:200]
    assert b"connection: close" in response.lower()
    assert http_request(proxy.port, "GET", "/next", host="web")[0] == 200


def test_smuggled_request_after_chunked_body_is_not_forwarded(basic):
    """A request hidden after a chunked body whose framing is rejected never reaches the origin."""
    proxy, _ = basic
    payload = (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n")
    response = raw_exchange(proxy.port, payload)
    assert status_of(response) == 400
    assert b"/smuggled" not in response


def fake_upstream(reply, hold_open=False):
    """A one-connection upstream that reads a request head, sends `reply` and closes (or keeps the socket)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            conn.sendall(reply)
            if not hold_open:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, port


def test_malformed_upstream_response_is_502(proxy_factory):
    server, port = fake_upstream(b"HTTP/1.1 2xx Broken\r\n\r\n")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]))
    status, _, body = http_request(proxy.port, "GET", "/", host="web")
    assert (status, body) == (502, b"malformed upstream response\n")
    server.close()


def test_upstream_closing_mid_response_aborts_the_download(proxy_factory):
    server, port = fake_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]))
    response = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    head, body = response.split(b"\r\n\r\n", 1)
    assert status_of(response) == 200
    assert b"content-length: 1000" in head.lower()
    assert body == b"partial"  # then the connection closed: the client sees a short, broken body
    assert proxy.metrics()["waypoint_upstream_resets_total"] == 1
    server.close()


def test_upstream_closing_before_the_head_is_503(proxy_factory):
    server, port = fake_upstream(b"")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]))
    status, _, body = http_request(proxy.port, "GET", "/", host="web")
    assert (status, body) == (503, b"upstream reset before response headers\n")
    server.close()


def test_close_delimited_upstream_response_is_passed_through(proxy_factory):
    server, port = fake_upstream(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nuntil close")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]))
    response = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    assert status_of(response) == 200
    assert response.endswith(b"\r\n\r\nuntil close")
    assert b"connection: close" in response.lower()
    server.close()


def test_chunked_upstream_response_is_relayed(proxy_factory):
    server, port = fake_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", hold_open=True)
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]))
    status, _, body = http_request(proxy.port, "GET", "/", host="web")
    assert (status, body) == (200, b"abc")
    server.close()


def test_refused_upstream_is_503_and_the_connection_lives_on(proxy_factory):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", dead_port)]))
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for _ in range(2):
        conn.request("GET", "/", headers={"Host": "web"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (503, b"upstream connect error\n")
    conn.close()
    assert proxy.metrics()["waypoint_upstream_connect_failures_total"] == 2


def test_a_trickled_head_times_out_with_408(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]), extra=["--header-timeout", "300ms"])
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n")  # and never the blank line
    response = read_to_close(s)
    assert status_of(response) == 408
    assert response.endswith(b"request header timeout\n")
    assert http_request(proxy.port, "GET", "/", host="web")[0] == 200


def test_upstream_that_never_accepts_times_out_with_503(proxy_factory):
    """A listener whose accept queue is full drops SYNs, so connect() hangs until the connect timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs get no answer
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    import time
    time.sleep(0.2)
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", port)]), extra=["--connect-timeout", "300ms", "--workers", "1"])
    started = time.time()
    status, _, body = http_request(proxy.port, "GET", "/", host="web")
    elapsed = time.time() - started
    assert (status, body) == (503, b"upstream connect error\n")
    assert 0.25 <= elapsed < 3, elapsed
    assert proxy.metrics()["waypoint_upstream_connect_failures_total"] == 1
    for f in fillers:
        f.close()
    server.close()


def test_random_and_mutated_requests_never_take_the_proxy_down(basic):
    """A few hundred hostile byte strings, each on its own connection followed by EOF: every one is answered or
    closed (never left hanging), the process stays up, and a well-formed request still works afterwards."""
    import random
    proxy, _ = basic
    import time
    rng = random.Random(1234)  # fixed seed: the same inputs every run
    statuses = {}
    valid = b"POST /p?q=1 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    for i in range(300):
        if i % 3 == 0:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        else:
            payload = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                pos = rng.randrange(len(payload))
                choice = rng.randrange(3)
                if choice == 0:
                    payload[pos] = rng.choice(b"\r\n :\x00\x7f\t,;-0123456789abcdefABCDEF")
                elif choice == 1:
                    del payload[pos]
                else:
                    payload[pos:pos] = payload[rng.randrange(len(payload)):][:rng.randrange(1, 20)]
            payload = bytes(payload)
        started = time.time()
        try:
            response = raw_exchange(proxy.port, payload, timeout=5, half_close=True)
        except ConnectionResetError:
            response = b""  # closed on us while we were still sending: also an answer
        assert time.time() - started < 4, f"input {i} left hanging: {payload!r}"
        status = status_of(response)
        statuses[status] = statuses.get(status, 0) + 1
        assert status is None or 100 <= status <= 599, response[:100]
        assert proxy.proc.poll() is None, f"proxy died on input {i}: {payload!r}"
    assert http_request(proxy.port, "GET", "/after-fuzz", host="web")[0] == 200
    assert statuses.get(400, 0) > 50 and statuses.get(200, 0) > 5, statuses  # both parsers really ran


def test_debug_log_names_why_a_request_was_rejected(origin_factory, proxy_factory):
    origin = origin_factory("a")
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]), extra=["--log-level", "debug"])
    assert status_of(raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: web\r\nX: a\r\n b\r\n\r\n")) == 400
    import time
    for _ in range(50):
        if "rejected request: 400 obsolete line folding" in proxy.stderr():
            break
        time.sleep(0.02)
    assert "rejected request: 400 obsolete line folding" in proxy.stderr()
