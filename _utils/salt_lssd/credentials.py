"""Per-deploy credentials: who may take part in one deploy's swarm.

Each build gets its own certificate authority. Its certificate goes into the torrent (an
SSL torrent: libtorrent then speaks to that torrent's peers only over TLS, and only with a
peer presenting a certificate signed by that authority); one certificate and key signed by
it travel to the targeted peers through the Salt mine, readable only by them. A host that
knows the info-hash, or scans the seeder's and peers' ports, cannot complete a handshake and
gets no piece. The authority's key never leaves the seeder and signs nothing else.
"""

import datetime
import os

from salt_lssd.common import ensure_dir, write_atomic

# A deploy is short; a week covers a deploy kept seeding over a long weekend.
_VALIDITY = datetime.timedelta(days=7)
# libtorrent loads Diffie-Hellman parameters with every certificate and fails the torrent
# without a file. These are RFC 7919's ffdhe2048 group (public, standard): generating our
# own would cost the seeder many seconds for nothing (TLS 1.3 uses ECDHE anyway).
FFDHE2048 = """\
-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def _pem(cert):
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _certificate(subject, issuer, public_key, signing_key, is_ca):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks of a fleet drift
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def make(directory, tag):
    """Make the authority and the deploy certificate of ``tag`` in ``directory``.

    Returns ``ca`` (the authority's certificate, PEM: it goes into the torrent), ``cert`` and
    ``key`` (PEM: for every participant) and ``cert_path``/``key_path`` (files, mode 0600).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    # X.509 names hold at most 64 characters; a tag may have 128. The tag only labels them.
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"salt-lssd {tag}"[:54] + " authority")])
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    # libtorrent accepts a peer's certificate for a torrent only if its name is the torrent's
    # name or "*"; the authority is this deploy's alone, so "*" grants nothing more.
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"salt-lssd {tag}"[:64]),
                      x509.NameAttribute(NameOID.COMMON_NAME, "*")])
    cert = _certificate(name, ca_name, key.public_key(), ca_key, False)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    paths = install(directory, _pem(cert), key_pem)
    return dict(paths, ca=_pem(ca), cert=_pem(cert), key=key_pem)


def _paths(directory):
    return {name: os.path.join(directory, f"ssl-{name[:-5]}.pem") for name in ("cert_path", "key_path", "dh_path")}


def install(directory, cert, key):
    """Write a participant's certificate and key where its process reads them (mode 0600)."""
    ensure_dir(directory)
    paths = _paths(directory)
    write_atomic(paths["cert_path"], cert)
    write_atomic(paths["key_path"], key)
    write_atomic(paths["dh_path"], FFDHE2048)
    return paths


def remove(directory):
    """Remove what ``install`` wrote in ``directory``: a peer's key is no use once its process
    has ended, and left on disk it would let anyone who reads it later join the deploy."""
    for path in _paths(directory).values():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def beside(torrent_path):
    """``{"cert", "key"}`` a seeder keeps beside its ``<tag>.torrent`` (in ``<tag>.ssl/``),
    or None: a torrent file taken from a seeder's state directory on the same host."""
    directory = os.path.splitext(torrent_path)[0] + ".ssl"
    try:
        with open(os.path.join(directory, "ssl-cert.pem")) as cert, open(os.path.join(directory, "ssl-key.pem")) as key:
            return {"cert": cert.read(), "key": key.read()}
    except FileNotFoundError:
        return None
