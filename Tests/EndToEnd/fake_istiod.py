"""A stand-in for istiod's CA (no istiod can run here): `istio.v1.auth.IstioCertificateService/CreateCertificate`
served by `grpcio` over TLS, with the messages compiled from proto/ca.proto at test time by protobuf's own
compiler. It behaves as istiod does where the waypoint can tell: the bearer token is authenticated (a table of
token → identity stands in for the TokenReview), the identity is the token's and the CSR must ask for exactly
it, the certificate carries that URI SAN and serverAuth + clientAuth, and the answer is leaf first, root last.
Its certificates live `lifetime` seconds so that rotation happens within a test; `down` makes it answer
UNAVAILABLE (an outage)."""
import base64
import datetime
import json
import os
import threading
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

import pki
from conftest import compiled_proto

def messages():
    """The ca.proto modules (messages, services)."""
    return compiled_proto("ca")


def service_account_token(namespace, name):
    """A JWT shaped like a projected token (unsigned here: the stand-in authenticates it by table, as a
    TokenReview would)."""
    def segment(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    claims = {"aud": ["istio-ca"], "iss": "https://kubernetes.default.svc", "sub": f"system:serviceaccount:{namespace}:{name}",
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}}}
    return f"{segment({'alg': 'RS256', 'kid': 'test'})}.{segment(claims)}.c2lnbmF0dXJl"


class FakeIstiod:
    SERVER_NAME = "istiod.istio-system.svc"

    def __init__(self, directory, lifetime=3600, trust_domain="cluster.local"):
        ca_pb2, ca_grpc = messages()
        self.ca_pb2 = ca_pb2
        self.root = pki.CA("stand-in istiod root")
        self.lifetime, self.trust_domain = lifetime, trust_domain
        self.tokens = {}          # token -> (namespace, service account), the TokenReview's answers
        self.down = False
        self.requests = []        # (metadata dict, validity_duration, outcome) per call
        self.issued = []          # serial numbers issued
        self.lock = threading.Lock()
        self.root_path = os.path.join(directory, "istiod-root.pem")
        with open(self.root_path, "wb") as f:
            f.write(self.root.cert.public_bytes(serialization.Encoding.PEM))
        key, cert = self.root.issue(dns=[self.SERVER_NAME, "istiod.istio-system.svc.cluster.local"])
        outer = self

        class Service(ca_grpc.IstioCertificateServiceServicer):
            def CreateCertificate(self, request, context):
                return outer.create(request, context)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        ca_grpc.add_IstioCertificateServiceServicer_to_server(Service(), self.server)
        credentials = grpc.ssl_server_credentials([(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))])
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def allow(self, namespace, name, token=None):
        """Registers a token for the service account; returns it."""
        token = token or service_account_token(namespace, name)
        self.tokens[token] = (namespace, name)
        return token

    def stop(self):
        self.server.stop(None)

    def _refuse(self, context, metadata, request, code, message):
        with self.lock:
            self.requests.append((metadata, request.validity_duration, code.name))
        context.abort(code, message)

    def create(self, request, context):
        metadata = dict(context.invocation_metadata())
        if self.down:
            self._refuse(context, metadata, request, grpc.StatusCode.UNAVAILABLE, "istiod is restarting")
        auth = metadata.get("authorization", "")
        identity = self.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
        if identity is None:
            self._refuse(context, metadata, request, grpc.StatusCode.UNAUTHENTICATED,
                         "authenticate failure: the token was not accepted")
        spiffe = f"spiffe://{self.trust_domain}/ns/{identity[0]}/sa/{identity[1]}"
        try:
            csr = x509.load_pem_x509_csr(request.csr.encode())
            assert csr.is_signature_valid
            uris = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
        except Exception as error:   # noqa: BLE001 (any defect in the CSR is the caller's)
            self._refuse(context, metadata, request, grpc.StatusCode.INVALID_ARGUMENT, f"CSR parsing error ({error})")
        if uris != [spiffe]:
            self._refuse(context, metadata, request, grpc.StatusCode.INVALID_ARGUMENT,
                         f"CSR asks for {uris}, the caller is {spiffe}")
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.root.cert.subject)
                .public_key(csr.public_key()).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(seconds=1))
                .not_valid_after(now + datetime.timedelta(seconds=min(self.lifetime, request.validity_duration or self.lifetime)))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.root.key, hashes.SHA256()))
        with self.lock:
            self.requests.append((metadata, request.validity_duration, "OK"))
            self.issued.append(format(serial, "X"))
        pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()   # noqa: E731
        return self.ca_pb2.IstioCertificateResponse(cert_chain=[pem(leaf), pem(self.root.cert)])

    def client_certificate(self, directory, namespace, name):
        """A workload certificate from this CA's root (what a ztunnel presents): (cert path, key path)."""
        key, cert = self.root.issue(uris=[f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{name}"])
        return pki.write(directory, f"{namespace}-{name}", key, cert)
