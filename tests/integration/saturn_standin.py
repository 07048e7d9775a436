"""A local stand-in for Saturn Cloud's HTTP API, as ``dask_saturn.SaturnCluster`` 0.4.4 uses it.

Real HTTP on ``127.0.0.1`` (a stdlib ``ThreadingHTTPServer`` in a thread). The stand-in owns no
Dask processes: it is given the address of a real scheduler (``tcp://127.0.0.1:PORT``, or
``tls://...`` with a :class:`CertificateAuthority`) and hands it out as "the Saturn cluster".
Every request is recorded (method, path, query, JSON body, ``Authorization`` header) in
``StandIn.requests``.

dask_saturn reads ``SATURN_BASE_URL`` and ``SATURN_TOKEN`` (both required), ``SATURN_VERSION``
(optional), ``SATURN_IS_INTERNAL`` (anything but ``"true"`` means an *external* client: the
requests get ``?is_external=true`` and the client asks for a TLS certificate) and
``SATURN_RESOURCE_TYPE`` (``Prefect*`` forces ``shutdown_on_close=True``). It sends
``Authorization: token <SATURN_TOKEN>`` and ``X-Dask-Saturn-Version`` on every request, and its
POST bodies are JSON without a ``Content-Type``. Errors are answered as ``{"message": ...}``,
which is what dask_saturn turns into ``ValueError(message)``.

Endpoints faked (paths below ``SATURN_BASE_URL``; ``<id>`` is ``StandIn.cluster_id``):

=======  ===================================  ====================================================
Method   Path                                 Called by (dask_saturn 0.4.4)
=======  ===================================  ====================================================
GET      /api/dask_clusters/info              ``list_sizes()``/``describe_sizes()``, and so
                                              ``SaturnCluster.__init__`` (``_validate_sizes``,
                                              always): ``{"server_options": {"size": [{name,
                                              display}]}}``
POST     /api/dask_clusters[?is_external=     ``SaturnCluster._start`` (polled until ready):
         true]                                body ``{n_workers, worker_size, worker_is_spot,
                                              scheduler_size, nprocs, nthreads}`` minus Nones →
                                              ``{status: ready|pending|error, id, warnings,
                                              errors}``
POST     /api/dask_clusters/reset             ``SaturnCluster.reset(...)`` (then ``__init__``)
GET      /api/dask_clusters/<id>/info         ``SaturnCluster.__init__`` (``_get_info``):
         [?is_external=true]                  ``{scheduler_address, dashboard_link}``
POST     /api/dask_clusters/<id>/csr          external clients only (``external._client_tls``):
                                              PEM CSR in, PEM chain (client cert, CA) out
GET      /api/dask_clusters/<id>/status       ``.status`` — read by ``Client(cluster)``, by every
                                              client heartbeat and by ``Cluster.__del__``
GET      /api/dask_clusters/<id>              ``._get_pod_status()`` (when ``/status`` fails)
GET      /api/dask_clusters/<id>/scheduler_   ``.scheduler_info`` (``repr(cluster)``): the real
         info                                 scheduler's ``identity()``
POST     /api/dask_clusters/<id>/scale        ``.scale(n)``: body ``{"n": n}``
POST     /api/dask_clusters/<id>/adapt        ``.adapt(minimum, maximum)``
POST     /api/dask_clusters/<id>/close        ``.close()`` (and ``__exit__`` when
                                              ``shutdown_on_close``)
=======  ===================================  ====================================================
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

API = "/api/dask_clusters"

#: Saturn's size names and descriptions, as ``GET /api/dask_clusters/info`` lists them.
DEFAULT_SIZES: tuple[tuple[str, str], ...] = (
    ("medium", "Medium - 2 cores - 4 GB RAM"),
    ("large", "Large - 2 cores - 16 GB RAM"),
    ("xlarge", "XLarge - 4 cores - 32 GB RAM"),
    ("2xlarge", "2XLarge - 8 cores - 64 GB RAM"),
)


@dataclass(frozen=True)
class Recorded:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    json: Any
    body: bytes
    authorization: str | None
    headers: dict[str, str]


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for one TLS party (``dask scheduler``/``dask worker`` ``--tls-*`` options)."""

    ca_file: Path
    cert: Path
    key: Path


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class CertificateAuthority:
    """The Dask cluster CA Saturn keeps: signs client CSRs and issues node certificates."""

    def __init__(self, common_name: str = "Saturn stand-in Dask CA") -> None:
        """Make a fresh self-signed CA (RSA 2048, valid for a day)."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.signed: list[x509.Certificate] = []

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return _pem_cert(self.cert)

    def _sign(self, subject: x509.Name, public_key: Any, *, server: bool) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
                ),
                critical=False,
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_csr(self, csr_pem: bytes) -> bytes:
        """Sign a client CSR; return the PEM chain dask_saturn expects: the cert, then the CA."""
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise ValueError("CSR signature is invalid")
        cert = self._sign(csr.subject, csr.public_key(), server=False)
        self.signed.append(cert)
        return _pem_cert(cert) + self.ca_pem

    def issue(self, common_name: str) -> tuple[bytes, bytes]:
        """A server+client certificate for ``127.0.0.1``/``localhost``: ``(cert_pem, key_pem)``."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        return _pem_cert(self._sign(subject, key.public_key(), server=True)), _pem_key(key)

    def write_files(self, directory: Path, name: str) -> TLSFiles:
        """Issue a certificate for ``name`` and write it, its key and the CA under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self.issue(name)
        files = TLSFiles(directory / "ca.pem", directory / f"{name}.pem", directory / f"{name}.key")
        files.ca_file.write_bytes(self.ca_pem)
        files.cert.write_bytes(cert_pem)
        files.key.write_bytes(key_pem)
        files.key.chmod(0o600)
        return files


@dataclass
class StandIn:
    """State of the fake Saturn API; read it (and ``requests``) from the tests."""

    url: str
    token: str
    scheduler_address: str
    cluster_id: str = "0123456789abcdef0123456789abcdef"
    sizes: tuple[tuple[str, str], ...] = DEFAULT_SIZES
    ca: CertificateAuthority | None = None
    #: answer ``{"status": "pending"}`` to this many ``POST /api/dask_clusters`` first
    pending_polls: int = 0
    #: answer ``{"status": "error", "errors": errors}`` to ``POST /api/dask_clusters``
    errors: Sequence[str] = ()
    warnings: Sequence[str] = ()
    status: str = "stopped"
    n_workers: int | None = None
    adapt_bounds: tuple[int, int] | None = None
    config: dict[str, Any] | None = None
    requests: list[Recorded] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def cluster_path(self) -> str:
        """``/api/dask_clusters/<id>``."""
        return f"{API}/{self.cluster_id}"

    def env(self, *, internal: bool = True) -> dict[str, str]:
        """The environment dask_saturn needs to talk to this stand-in.

        ``internal=True`` is how a Saturn resource looks from inside (plain ``tcp://``);
        ``internal=False`` is an external client (TLS certificate from ``/csr``).
        """
        return {
            "SATURN_BASE_URL": self.url,
            "SATURN_TOKEN": self.token,
            "SATURN_IS_INTERNAL": "true" if internal else "false",
        }

    def calls(self, method: str, path: str) -> list[Recorded]:
        """Recorded requests with this method and path (query string excluded)."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def record(self, request: Recorded) -> None:
        """Append one request (thread-safe)."""
        with self._lock:
            self.requests.append(request)

    def scheduler_identity(self) -> dict[str, Any]:
        """Ask the real scheduler for ``identity()`` (what ``Client.scheduler_info`` shows)."""
        from distributed.core import rpc
        from distributed.security import Security

        security = Security()
        if self.ca is not None:
            cert_pem, key_pem = self.ca.issue("saturn-standin")
            security = Security(
                tls_ca_file=self.ca.ca_pem.decode(),
                tls_client_cert=cert_pem.decode(),
                tls_client_key=key_pem.decode(),
                require_encryption=True,
            )

        async def ask() -> dict[str, Any]:
            async with rpc(
                self.scheduler_address, connection_args=security.get_connection_args("client")
            ) as scheduler:
                return await scheduler.identity()

        return asyncio.run(ask())


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the stand-in's behaviour."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; the requests are recorded instead."""

    def do_GET(self) -> None:
        """Handle GET."""
        self._handle("GET")

    def do_POST(self) -> None:
        """Handle POST."""
        self._handle("POST")

    def do_DELETE(self) -> None:
        """Handle DELETE (nothing in dask_saturn sends it: 404)."""
        self._handle("DELETE")

    def _send(self, status: HTTPStatus, payload: Any, content_type: str = "application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        state.record(
            Recorded(
                method=method,
                path=parts.path,
                query=parse_qs(parts.query),
                json=parsed,
                body=body,
                authorization=self.headers.get("Authorization"),
                headers=dict(self.headers.items()),
            )
        )
        if self.headers.get("Authorization") != f"token {state.token}":
            self._send(HTTPStatus.UNAUTHORIZED, {"message": "Invalid or missing Saturn token"})
            return
        try:
            status, payload, content_type = self._route(state, method, parts.path, parsed, body)
        except Exception as exc:  # noqa: BLE001 - answer 500, keep the server thread alive
            status, payload, content_type = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"message": f"stand-in error: {exc!r}"},
                "application/json",
            )
        self._send(status, payload, content_type)

    def _route(
        self, state: StandIn, method: str, path: str, parsed: Any, body: bytes
    ) -> tuple[HTTPStatus, Any, str]:
        ok, js = HTTPStatus.OK, "application/json"
        cluster = state.cluster_path
        route = (method, path.rstrip("/") if path != "/" else path)
        if route == ("GET", f"{API}/info"):
            sizes = [{"name": name, "display": display} for name, display in state.sizes]
            return ok, {"server_options": {"size": sizes}}, js
        if route in {("POST", API), ("POST", f"{API}/reset")}:
            return self._create(state, parsed if isinstance(parsed, dict) else {})
        if route == ("GET", f"{cluster}/info"):
            dashboard = f"{state.url}dask/{state.cluster_id}/status"
            return (
                ok,
                {"scheduler_address": state.scheduler_address, "dashboard_link": dashboard},
                js,
            )
        if route == ("POST", f"{cluster}/csr"):
            if state.ca is None:
                return HTTPStatus.NOT_FOUND, {"message": "TLS is not set up in the stand-in"}, js
            return ok, state.ca.sign_csr(body), "application/x-pem-file"
        if route in {("GET", f"{cluster}/status"), ("GET", cluster)}:
            return ok, {"status": state.status}, js
        if route == ("GET", f"{cluster}/scheduler_info"):
            if state.status != "running":
                return HTTPStatus.BAD_REQUEST, {"message": "Cluster is not running."}, js
            return ok, state.scheduler_identity(), js
        if route == ("POST", f"{cluster}/scale"):
            state.n_workers = int(parsed["n"])
            return ok, {}, js
        if route == ("POST", f"{cluster}/adapt"):
            state.adapt_bounds = (int(parsed["minimum"]), int(parsed["maximum"]))
            return ok, {}, js
        if route == ("POST", f"{cluster}/close"):
            state.status = "closed"
            return ok, {}, js
        return HTTPStatus.NOT_FOUND, {"message": f"no such endpoint: {method} {path}"}, js

    @staticmethod
    def _create(state: StandIn, config: dict[str, Any]) -> tuple[HTTPStatus, Any, str]:
        js = "application/json"
        sizes = {name for name, _ in state.sizes}
        for key in ("worker_size", "scheduler_size"):
            if key in config and config[key] not in sizes:
                return HTTPStatus.BAD_REQUEST, {"message": f"invalid {key} {config[key]!r}"}, js
        state.config = config
        answer: dict[str, Any] = {"id": state.cluster_id, "warnings": list(state.warnings)}
        if state.errors:
            return HTTPStatus.OK, {**answer, "status": "error", "errors": list(state.errors)}, js
        if state.pending_polls > 0:
            state.pending_polls -= 1
            state.status = "pending"
            return HTTPStatus.OK, {**answer, "status": "pending"}, js
        state.status = "running"
        state.n_workers = config.get("n_workers", state.n_workers)
        return HTTPStatus.OK, {**answer, "status": "ready"}, js


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: StandIn) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def saturn_api(
    scheduler_address: str,
    token: str = "test-token",
    *,
    ca: CertificateAuthority | None = None,
    sizes: tuple[tuple[str, str], ...] = DEFAULT_SIZES,
    pending_polls: int = 0,
    errors: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> Iterator[StandIn]:
    """Serve the fake Saturn API on a free loopback port for the ``with`` block.

    ``scheduler_address`` is what ``/info`` reports as the cluster's scheduler; ``ca`` (for
    ``tls://`` schedulers) signs the certificates external clients ask for at ``/csr``.
    """
    state = StandIn(
        url="",
        token=token,
        scheduler_address=scheduler_address,
        sizes=sizes,
        ca=ca,
        pending_polls=pending_polls,
        errors=errors,
        warnings=warnings,
    )
    server = _Server(state)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="saturn-standin", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        _forget_clusters(state.url)
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _forget_clusters(url: str) -> None:
    """Stop live ``SaturnCluster`` objects of this stand-in from calling it once it is gone.

    ``SaturnCluster.status`` is an HTTP GET, and ``Cluster.__del__`` reads it: a cluster garbage
    collected after the stand-in stopped would raise ``ConnectionError`` inside ``__del__``
    (an "unraisable exception", which this suite turns into an error). Without ``cluster_url``
    the property raises ``AttributeError``, which ``__del__`` treats as "closed".
    """
    try:
        from dask_saturn import SaturnCluster
    except ImportError:  # pragma: no cover - dask-saturn is a dependency
        return
    for cluster in list(SaturnCluster._instances):
        if str(getattr(cluster, "cluster_url", None) or "").startswith(url):
            del cluster.cluster_url
