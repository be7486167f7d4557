"""Tracing: W3C trace context honoured and continued, spans exported as OTLP/HTTP JSON to a collector."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from conftest import http_request, service_yaml

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP JSON receiver: keeps every span posted to /v1/traces."""

    def __init__(self):
        spans = self.spans = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                assert self.path == "/v1/traces"
                for resource in body["resourceSpans"]:
                    service = resource["resource"]["attributes"][0]["value"]["stringValue"]
                    for scope in resource["scopeSpans"]:
                        for span in scope["spans"]:
                            spans.append({**span, "service": service})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count, timeout=5):
        deadline = time.time() + timeout
        while len(self.spans) < count and time.time() < deadline:
            time.sleep(0.05)
        return self.spans


def test_sampled_requests_are_continued_and_exported(origin_factory, proxy_factory):
    origin = origin_factory("a")
    collector = Collector()
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]),
                          extra=["--otlp-endpoint", f"127.0.0.1:{collector.port}", "--trace-sample-rate", "0"])
    # Sampled by the caller: traced, and the upstream's parent is the waypoint's span.
    _, _, body = http_request(proxy.port, "GET", "/traced?x=1", host="web",
                              headers={"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=1",
                                       "x-b3-traceid": TRACE, "x-b3-spanid": PARENT, "x-b3-sampled": "1"})
    seen = json.loads(body)["headers"]
    # Not sampled by the caller, and no trace context with a 0 % rate: not traced, context passed on as is.
    _, _, body2 = http_request(proxy.port, "GET", "/unsampled", host="web", headers={"traceparent": f"00-{TRACE}-{PARENT}-00"})
    _, _, body3 = http_request(proxy.port, "GET", "/plain", host="web")
    spans = collector.wait(1)
    time.sleep(1.2)                       # one more export interval: nothing else may arrive
    assert len(collector.spans) == 1
    span = spans[0]
    assert span["traceId"] == TRACE and span["parentSpanId"] == PARENT and span["kind"] == 2
    assert seen["traceparent"] == f"00-{TRACE}-{span['spanId']}-01"
    assert seen["tracestate"] == "vendor=1" and seen["x-b3-traceid"] == TRACE and seen["x-b3-sampled"] == "1"
    attributes = {a["key"]: a["value"] for a in span["attributes"]}
    assert attributes["http.method"] == {"stringValue": "GET"}
    assert attributes["http.url"] == {"stringValue": "http://web/traced?x=1"}
    assert attributes["http.status_code"] == {"intValue": "200"}
    assert span["service"] == "waypoint" and int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 1.6e18
    assert json.loads(body2)["headers"]["traceparent"] == f"00-{TRACE}-{PARENT}-00"
    assert "traceparent" not in json.loads(body3)["headers"]
    assert proxy.metrics()['waypoint_trace_spans_total{result="exported"}'] == 1


def test_sample_rate_starts_new_traces(origin_factory, proxy_factory):
    origin = origin_factory("a")
    collector = Collector()
    proxy = proxy_factory(service_yaml("web", [("127.0.0.1", origin.port)]),
                          extra=["--otlp-endpoint", f"127.0.0.1:{collector.port}", "--trace-sample-rate", "100"])
    _, _, body = http_request(proxy.port, "GET", "/new", host="web")
    span = collector.wait(1)[0]
    assert "parentSpanId" not in span and len(span["traceId"]) == 32 and span["traceId"] != "0" * 32
    assert json.loads(body)["headers"]["traceparent"] == f"00-{span['traceId']}-{span['spanId']}-01"
