"""An HBONE client for tests, built on Python's `ssl` and the `h2` package (an HTTP/2 stack this project did
not write): mutual TLS 1.3 with ALPN h2, then CONNECT streams carrying raw bytes."""
import socket
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class HBONEClient:
    def __init__(self, port, cert, key, ca, alpn=("h2",), timeout=10.0, tls_max=ssl.TLSVersion.TLSv1_3):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = tls_max
        if cert:
            ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.check_hostname = False
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        # A graceful GOAWAY lets streams up to last_stream_id finish and comes with more frames (a PING to time
        # the final GOAWAY, RFC 9113 6.8), but h2 ends the connection on any GOAWAY and drops what it had queued
        # (a PING ack, say): this one stays open and keeps its queue; `pump` marks it closed for an error GOAWAY.
        self.conn.clear_outbound_data_buffer = lambda: None
        machine = self.conn.state_machine
        machine._transitions = dict(machine._transitions)
        machine._transitions[(h2.connection.ConnectionState.CLIENT_OPEN, h2.connection.ConnectionInputs.RECV_GOAWAY)] = (
            None, h2.connection.ConnectionState.CLIENT_OPEN)
        self.conn.initiate_connection()
        # ztunnel's client settings: 4 MiB stream window, 16 MiB connection window, 1 MiB frames.
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20,
                                   h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20})
        self.conn.increment_flow_control_window(15 << 20)
        self.flush()
        self.responses = {}   # stream -> (status, headers)
        self.data = {}        # stream -> bytearray
        self.ended = set()    # streams the server ended
        self.resets = {}      # stream -> error code
        self.closed = False
        self.settings = {}
        self.goaway = None

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def connect(self, authority, headers=(), end_stream=False):
        """Sends a CONNECT for `authority`; returns the stream id."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority), *headers], end_stream=end_stream)
        self.flush()
        return sid

    def pump(self):
        """Reads once from the socket and processes the events. False when the connection closed."""
        try:
            chunk = self.sock.recv(1 << 20)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(chunk)
        except h2.exceptions.ProtocolError:
            self.closed = True   # e.g. bytes after the server's GOAWAY closed the h2 state machine
            return False
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                self.responses[event.stream_id] = (int(headers[":status"]), headers)
            elif isinstance(event, h2.events.DataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings.update({k: v.new_value for k, v in event.changed_settings.items()})
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
                if event.error_code != 0:
                    self.closed = True
        self.flush()
        return True

    def wait(self, predicate):
        while not predicate():
            if not self.pump():
                return predicate()
        return True

    def status(self, sid):
        self.wait(lambda: sid in self.responses or sid in self.resets)
        return self.responses.get(sid, (None, {}))[0]

    def send(self, sid, data, end_stream=False):
        self.conn.send_data(sid, data, end_stream=end_stream)
        self.flush()

    def http(self, sid, request):
        """Sends a raw HTTP/1.1 request in the tunnel; returns the raw response (head + content-length body)."""
        start = len(self.data.get(sid, b""))
        self.send(sid, request)

        def complete():
            buf = bytes(self.data.get(sid, b""))[start:]
            if b"\r\n\r\n" not in buf:
                return sid in self.ended or sid in self.resets
            head, _, body = buf.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    return len(body) >= int(line.split(b":")[1])
            return sid in self.ended or sid in self.resets
        self.wait(complete)
        return bytes(self.data.get(sid, b""))[start:]

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


def get(path, host="svc"):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
