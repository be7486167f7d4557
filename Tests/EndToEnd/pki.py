"""A throwaway PKI for HBONE tests: a CA, SPIFFE workload certificates, and the broken kinds (untrusted CA,
expired, no URI SAN, other trust domain). Written with `cryptography`, into a directory the caller owns."""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CA:
    def __init__(self, name="waypoint test CA"):
        self.key = _key()
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, uris=(), dns=(), ips=(), expired=False):
        key = _key()
        names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns] \
            + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        start, end = (NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=1)) if expired \
            else (NOW - datetime.timedelta(hours=1), NOW + datetime.timedelta(days=1))
        builder = (x509.CertificateBuilder().subject_name(_name("workload")).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


def write(directory, stem, key, cert):
    """Writes STEM.key and STEM.pem; returns (cert path, key path)."""
    cert_path = os.path.join(directory, stem + ".pem")
    key_path = os.path.join(directory, stem + ".key")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def make(directory):
    """The standard test PKI. Returns a dict of name -> (cert, key) plus 'ca' -> bundle path."""
    ca = CA()
    other = CA("untrusted CA")
    result = {}
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.cert.public_bytes(serialization.Encoding.PEM))
    result["ca"] = ca_path
    result["ca_obj"] = ca
    td = "spiffe://cluster.local"
    specs = {
        "waypoint": (ca, dict(uris=[td + "/ns/default/sa/waypoint"], dns=["waypoint.default.svc"], ips=["127.0.0.1"])),
        "frontend": (ca, dict(uris=[td + "/ns/default/sa/frontend"])),
        "other-ns": (ca, dict(uris=[td + "/ns/shop/sa/cart"])),
        "untrusted": (other, dict(uris=[td + "/ns/default/sa/frontend"])),
        "expired": (ca, dict(uris=[td + "/ns/default/sa/frontend"], expired=True)),
        "no-uri": (ca, dict(dns=["frontend.default.svc"])),
        "foreign-td": (ca, dict(uris=["spiffe://evil.example/ns/default/sa/frontend"])),
        "alias-td": (ca, dict(uris=["spiffe://old.local/ns/default/sa/legacy"])),
        "two-ids": (ca, dict(uris=[td + "/ns/default/sa/a", td + "/ns/default/sa/b"])),
    }
    for name, (issuer, kwargs) in specs.items():
        key, cert = issuer.issue(**kwargs)
        result[name] = write(directory, name, key, cert)
    return result
