"""A stand-in for kube-apiserver (none can be installed here) that speaks its list/watch protocol over HTTPS
with its real failure modes, for the Kubernetes config source's black-box tests.

What it serves, per collection (`/api/v1/namespaces/NS/services`, `/apis/GROUP/VERSION/namespaces/NS/RESOURCE`):
- LIST: `{"kind": "...List", "metadata": {"resourceVersion", "continue"}, "items": [...]}`, paginated by `limit`,
  items without `apiVersion`/`kind` (as the real server leaves them out); a `continue` token older than the
  compaction point answers 410 Gone;
- WATCH (`watch=1&resourceVersion=RV`): a chunked stream of `{"type", "object"}` lines, one per change after RV,
  `BOOKMARK` events when `allowWatchBookmarks=true`, closed by the server after `timeoutSeconds`; a RV older than
  the compaction point answers 410 Gone (or, with `gone_as_event`, an `ERROR` event with a 410 Status, as the
  real server does for a watch whose start is too old);
- 401 without the bearer token (it may rotate: `token`), 403 for collections in `forbidden`, 404 for kinds whose
  CRD is not `installed`.
Fault hooks: `compact()`, `drop_watches()` (the connection closed mid-stream), `pause()`/`resume()` (the server
gone: connections refused, open watches cut).
"""
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CORE = {"Service": "services", "Endpoints": "endpoints", "Pod": "pods", "Namespace": "namespaces", "ConfigMap": "configmaps",
        "Secret": "secrets"}
GROUPED = {
    "EndpointSlice": ("discovery.k8s.io", "v1", "endpointslices"),
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "GRPCRoute": ("gateway.networking.k8s.io", "v1", "grpcroutes"),
    "ReferenceGrant": ("gateway.networking.k8s.io", "v1beta1", "referencegrants"),
    "TCPRoute": ("gateway.networking.k8s.io", "v1alpha2", "tcproutes"),
    "Gateway": ("gateway.networking.k8s.io", "v1", "gateways"),
    "VirtualService": ("networking.istio.io", "v1", "virtualservices"),
    "DestinationRule": ("networking.istio.io", "v1", "destinationrules"),
    "ServiceEntry": ("networking.istio.io", "v1", "serviceentries"),
    "AuthorizationPolicy": ("security.istio.io", "v1", "authorizationpolicies"),
    "PeerAuthentication": ("security.istio.io", "v1", "peerauthentications"),
    "RequestAuthentication": ("security.istio.io", "v1", "requestauthentications"),
}
BUILTIN = {"Service", "Endpoints", "Pod", "EndpointSlice", "Namespace", "ConfigMap", "Secret"}


def collection(kind, namespace):
    if kind == "Namespace":                  # cluster-scoped
        return "/api/v1/namespaces"
    if kind in CORE:
        return f"/api/v1/namespaces/{namespace}/{CORE[kind]}"
    group, version, resource = GROUPED[kind]
    return f"/apis/{group}/{version}/namespaces/{namespace}/{resource}"


def kind_of(path):
    if path == "/api/v1/namespaces":
        return "Namespace"
    for kind in list(CORE) + list(GROUPED):
        resource = CORE.get(kind) or GROUPED[kind][2]
        if path.endswith("/" + resource):
            return kind
    return None


class FakeAPIServer:
    def __init__(self, certs, token="token-1",
                 installed=("HTTPRoute", "GRPCRoute", "TCPRoute", "ReferenceGrant", "Gateway", "VirtualService",
                            "DestinationRule", "ServiceEntry", "AuthorizationPolicy", "PeerAuthentication",
                            "RequestAuthentication")):
        key, cert = certs["ca_obj"].issue(dns=["kubernetes.default.svc"], ips=["127.0.0.1"])
        import pki
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="fake-apiserver-")
        self.cert_path, self.key_path = pki.write(self.dir, "apiserver", key, cert)
        self.ca_path = certs["ca"]
        self.token = token
        self.installed = set(installed) | BUILTIN
        self.forbidden = set()
        self.gone_as_event = False
        self.mutex = threading.RLock()
        self.lock = threading.Condition(self.mutex)
        self.changed = {}          # collection path -> a Condition on `mutex`: only that collection's watches wake
        self.rv = 100
        self.objects = {}          # collection path -> {name: object}
        self.history = {}          # collection path -> [(rv, type, object)], oldest first
        self.compacted = 0         # resourceVersions at or below this are gone
        self.requests = []         # (method, path with query, authorization) in arrival order
        self.epoch = 0             # bumped to cut every open watch
        self.paused = False
        self._start()

    # ---- the store ---------------------------------------------------------------------------------------------

    def apply(self, obj):
        """Creates or replaces an object (a dict as `kubectl apply` would send it)."""
        with self.lock:
            self.rv += 1
            obj = json.loads(json.dumps(obj))
            meta = obj.setdefault("metadata", {})
            if obj["kind"] != "Namespace":
                meta.setdefault("namespace", "default")
            meta["resourceVersion"] = str(self.rv)
            path = collection(obj["kind"], meta.get("namespace"))
            existed = meta["name"] in self.objects.setdefault(path, {})
            self.objects[path][meta["name"]] = obj
            self.history.setdefault(path, []).append((self.rv, "MODIFIED" if existed else "ADDED", obj))
            self.wake(path)

    def delete(self, kind, name, namespace="default"):
        with self.lock:
            path = collection(kind, namespace)
            obj = self.objects.get(path, {}).pop(name)
            self.rv += 1
            obj = dict(obj, metadata=dict(obj["metadata"], resourceVersion=str(self.rv)))
            self.history.setdefault(path, []).append((self.rv, "DELETED", obj))
            self.wake(path)

    def wake(self, path=None):
        """Wakes the watches of `path` (None: every watch); the lock held."""
        for watched, condition in self.changed.items():
            if path is None or watched == path:
                condition.notify_all()

    def compact(self):
        """Forgets the history, as etcd's compaction after writes elsewhere does: watches and continue tokens from
        before now get 410 Gone."""
        with self.lock:
            self.rv += 5
            self.compacted = self.rv
            self.history = {}

    def drop_watches(self):
        with self.lock:
            self.epoch += 1
            self.wake()

    def pause(self):
        """The API server is gone: open watches are cut and new connections refused until `resume`."""
        with self.lock:
            self.paused = True
            self.epoch += 1
            self.wake()
        self.httpd.shutdown()
        self.httpd.server_close()

    def resume(self):
        with self.lock:
            self.paused = False
        self._start(self.port)

    def watches(self, kind):
        return [r for r in self.requests if "watch=1" in r[1] and kind_of(urlparse(r[1]).path) == kind]

    def lists(self, kind):
        return [r for r in self.requests if "watch=1" not in r[1] and kind_of(urlparse(r[1]).path) == kind]

    def kubeconfig(self, directory, token_file=None):
        """A kubeconfig for this server (token inline, or `tokenFile`)."""
        import base64
        with open(self.ca_path, "rb") as f:
            ca = base64.b64encode(f.read()).decode()
        credential = f"tokenFile: {token_file}" if token_file else f"token: {self.token}"
        path = f"{directory}/kubeconfig"
        with open(path, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
current-context: test
contexts: [{{name: test, context: {{cluster: fake, user: waypoint}}}}]
clusters: [{{name: fake, cluster: {{server: "https://127.0.0.1:{self.port}", certificate-authority-data: {ca}}}}}]
users: [{{name: waypoint, user: {{{credential}}}}}]
""")
        return path

    # ---- HTTP --------------------------------------------------------------------------------------------------

    def _start(self, port=0):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(("GET", self.path, self.headers.get("Authorization")))
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    return self.status(401, "Unauthorized")
                kind = kind_of(url.path)
                if kind is None or kind not in server.installed:
                    return self.status(404, "the server could not find the requested resource")
                if kind in server.forbidden:
                    return self.status(403, f'{kind} is forbidden: User "system:serviceaccount:default:waypoint" cannot list resource')
                if query.get("watch") in ("1", "true"):
                    return self.watch(url.path, query)
                return self.list(url.path, kind, query)

            def status(self, code, message):
                body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                   "code": code}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def list(self, path, kind, query):
                limit = int(query.get("limit", "0")) or 1 << 30
                with server.lock:
                    if "continue" in query:
                        rv, offset = query["continue"].split(":")
                        if int(rv) <= server.compacted and server.compacted:
                            return self.status(410, "The provided continue parameter is too old")
                        rv, offset = int(rv), int(offset)
                    else:
                        rv, offset = server.rv, 0
                    items = sorted(server.objects.get(path, {}).values(), key=lambda o: o["metadata"]["name"])
                    items = [o for o in items if self.selected(o, query)]
                    page = items[offset:offset + limit]
                    more = offset + limit < len(items)
                stripped = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
                meta = {"resourceVersion": str(rv)}
                if more:
                    meta["continue"] = f"{rv}:{offset + limit}"
                body = json.dumps({"kind": kind + "List", "apiVersion": "v1", "metadata": meta, "items": stripped}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def selected(self, obj, query):
                """Whether `obj` passes the request's `fieldSelector` (only `metadata.name=X`) and `labelSelector`
                (equality terms `k=v`, comma-separated)."""
                selector = query.get("fieldSelector")
                if selector:
                    field, _, value = selector.partition("=")
                    assert field == "metadata.name", selector
                    if obj["metadata"]["name"] != value:
                        return False
                labels = obj["metadata"].get("labels") or {}
                for term in filter(None, (query.get("labelSelector") or "").split(",")):
                    key, _, value = term.partition("=")
                    if labels.get(key) != value:
                        return False
                return True

            def after(self, path, rv):
                """The changes of `path` after `rv` (the lock held)."""
                events = server.history.get(path, [])
                low, high = 0, len(events)
                while low < high:
                    mid = (low + high) // 2
                    if events[mid][0] <= rv:
                        low = mid + 1
                    else:
                        high = mid
                return events[low:]

            def chunk(self, obj):
                data = (json.dumps(obj) + "\n").encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def watch(self, path, query):
                since = int(query.get("resourceVersion") or 0)
                deadline = time.time() + int(query.get("timeoutSeconds", "300"))
                bookmarks = query.get("allowWatchBookmarks") == "true"
                with server.lock:
                    too_old = server.compacted and since < server.compacted
                    epoch = server.epoch
                if too_old and not server.gone_as_event:
                    return self.status(410, f"too old resource version: {since} ({server.compacted})")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    if too_old:
                        self.chunk({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                                "message": "too old resource version", "reason": "Expired",
                                                                "code": 410}})
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    sent_rv = since
                    last_bookmark = time.time()
                    while time.time() < deadline:
                        with server.lock:
                            pending = self.after(path, sent_rv)
                            if not pending and server.epoch == epoch:
                                server.changed.setdefault(path, threading.Condition(server.mutex)).wait(0.2)
                                pending = self.after(path, sent_rv)
                            cut = server.epoch != epoch
                            current = server.rv
                        if cut:
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        for rv, type_, obj in pending:
                            if self.selected(obj, query):
                                self.chunk({"type": type_, "object": obj})
                            sent_rv = rv
                        if bookmarks and time.time() - last_bookmark > 1:
                            self.chunk({"type": "BOOKMARK", "object": {"kind": "Bookmark", "apiVersion": "v1",
                                                                       "metadata": {"resourceVersion": str(max(sent_rv, current))}}})
                            sent_rv = max(sent_rv, current)
                            last_bookmark = time.time()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, self.key_path)

        class Server(ThreadingHTTPServer):
            # As a real API server: a deep accept queue, and each TLS handshake on the connection's own thread.
            # With Python's default (5, handshakes in the accepting thread) the waypoint's watchers reconnecting
            # together overflowed the queue, and the kernel's dropped SYN cost a 1 s retransmission.
            request_queue_size = 1024
            daemon_threads = True

            def finish_request(self, request, client_address):
                try:
                    request = ctx.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    request.close()
                    return
                try:
                    super().finish_request(request, client_address)
                finally:
                    self.shutdown_request(request)   # the wrapped socket (the raw one was detached)

        httpd = Server(("127.0.0.1", port), Handler)
        self.httpd = httpd
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def close(self):
        self.pause()
