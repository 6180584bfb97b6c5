"""A GCS emulator on localhost that gcsfs (run store, orbax's folders) and tensorstore (orbax's
array data) both talk to, so gs:// paths are exercised through the real client code.

The emulator (the `gcp-storage-emulator` package) speaks the GCS JSON API, keeps objects in
memory, and serves one request at a time from a thread of the test process (subprocesses reach
it too). One gap is filled here: it omits the object's generation from media downloads, which
real GCS always sends (x-goog-generation) and tensorstore needs for its conditional re-reads.
It does not enforce preconditions (ifGenerationMatch): concurrent writers are not exercised.

Nothing here can reach the network: every client is pointed at the emulator, with credential
discovery switched off and any metadata-server lookup sent to a closed local port.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import socketserver
import sys
import tempfile

BUCKET = "scaling-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str, home: str) -> dict[str, str]:
    """Environment variables that point gcsfs and tensorstore at the emulator at `url`."""
    closed = "127.0.0.1:9"  # nothing listens: a lookup that slips through fails at once, locally
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, and google-cloud-storage (orbax's bucket-type check)
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore, in place of https://storage.googleapis.com
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a fixed token, no credential search
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: anonymous, no credential search
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no gRPC bucket-type probe (read at import)
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "GCE_METADATA_ROOT": closed,
        "CLOUDSDK_CONFIG": home,  # no gcloud credentials of the machine are picked up
    }


@contextlib.contextmanager
def running_emulator(monkeypatch):
    """Start the emulator with BUCKET, point this process's clients at it; yields its env vars."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are expected
    _send_generation_on_downloads()
    # Clients fetch many objects at once; the stdlib server's listen backlog of 5 drops the rest,
    # and each dropped connection costs a 1 s SYN retry.
    monkeypatch.setattr(http.server.HTTPServer, "request_queue_size", 128)
    monkeypatch.setattr(http.server.HTTPServer, "handle_error", _quiet_when_the_client_hung_up)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    gcloud_home = tempfile.TemporaryDirectory(prefix="gcloud-config-")
    env = client_env(f"http://127.0.0.1:{port}", gcloud_home.name)
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    _fresh_clients(monkeypatch)
    try:
        yield env
    finally:
        _fresh_clients(monkeypatch)
        server.stop()
        gcloud_home.cleanup()


def _quiet_when_the_client_hung_up(self, request, client_address):
    """gcsfs races two requests for one lookup and drops the loser: not an error worth a traceback."""
    if not isinstance(sys.exc_info()[1], ConnectionError):
        socketserver.BaseServer.handle_error(self, request, client_address)


def _send_generation_on_downloads() -> None:
    """Add the x-goog-generation / x-goog-metageneration headers GCS sends with object content."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.download
    if getattr(original, "sends_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]
        except NotFound:
            pass  # the original answers 404
        return original(request, response, storage, *args, **kwargs)

    download.sends_generation = True
    objects.download = download  # objects.get (GET ...?alt=media) calls it by this name
    for _, methods in server.HANDLERS:  # the /download/... route holds the function itself
        for method, handler in methods.items():
            if handler is original:
                methods[method] = download


def _fresh_clients(monkeypatch) -> None:
    """Drop cached filesystem instances, so none made before (or pointing at a stopped emulator) is reused."""
    import fsspec.config
    import gcsfs
    from etils.epath import backend

    # fsspec read FSSPEC_* when it was imported, before the env above was set.
    monkeypatch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
    assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, (
        "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set; its extended "
        "filesystem probes the bucket over gRPC, which the emulator does not serve"
    )
    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


@contextlib.contextmanager
def recorded_requests():
    """Yields the list of request lines ("POST /upload/... HTTP/1.1") the emulator serves meanwhile."""
    lines: list[str] = []

    class Record(logging.Handler):
        def emit(self, record):
            message = record.getMessage()  # '"GET /path HTTP/1.1" 200 -' for each request served
            if message.startswith('"'):
                lines.append(message.split('"')[1])

    log = logging.getLogger("gcp_storage_emulator.server")  # where it logs each request
    handler, level = Record(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def list_objects(prefix: str) -> list[str]:
    """Every object under gs://BUCKET/<prefix>, relative to it, read by a fresh gcsfs client."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
    root = f"{BUCKET}/{prefix.strip('/')}"
    return sorted(p[len(root) + 1:] for p in fs.find(root))
