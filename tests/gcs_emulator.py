"""A GCS emulator on localhost that gcsfs (run store, orbax's folders) and tensorstore (orbax's
array data) both talk to, so gs:// paths are exercised through the real client code.

The emulator (the `gcp-storage-emulator` package) speaks the GCS JSON API, keeps objects in
memory, and serves one request at a time from a thread of the test process (subprocesses reach
it too). Two gaps are filled here: it omits the object's generation from media downloads, which real GCS
always sends (x-goog-generation) and tensorstore needs for its conditional re-reads; and it ignores
the ifGenerationMatch precondition of uploads and deletes, which real GCS enforces (412) and the
claims on runs rely on (lib/store/claims.py) -- patched to enforce it, atomically.

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
    _enforce_generation_match()
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


def _enforce_generation_match() -> None:
    """Uploads and deletes with ?ifGenerationMatch=G go ahead only if the object's generation is G
    (0: the object must not exist); otherwise 412, as GCS answers. Check and write under one lock."""
    import threading
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.insert, "checks_generation", False):
        return
    lock = threading.Lock()

    def guarded(original, name_of):
        def handler(request, response, storage, *args, **kwargs):
            want = (request.query.get("ifGenerationMatch") or [None])[0]
            if want is None:
                return original(request, response, storage, *args, **kwargs)
            with lock:
                try:
                    have = storage.get_file_obj(request.params["bucket_name"], name_of(request))["generation"]
                except NotFound:
                    have = "0"
                if str(have) != str(want):
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                    return None
                return original(request, response, storage, *args, **kwargs)

        handler.checks_generation = True
        return handler

    def upload_name(request):
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data if isinstance(request.data, dict) else {}
        return (data.get("meta") or {}).get("name") or data.get("name")

    replaced = {objects.insert: guarded(objects.insert, upload_name),
                objects.delete: guarded(objects.delete, lambda request: request.params["object_id"])}
    for _, methods in server.HANDLERS:
        for method, handler in methods.items():
            if handler in replaced:
                methods[method] = replaced[handler]
    objects.insert, objects.delete = replaced[objects.insert], replaced[objects.delete]


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
