"""Where run files live: a local folder or an object-store URL (gs://...), behind a few operations.

Local paths keep POSIX semantics: a write goes to a temp file renamed over the target (atomic), an
append is an append. Object stores have neither: a rename on GCS is a copy + delete, and objects
cannot be appended to. But one object upload is atomic by itself (readers see the old object or
the new one, never half), so a URL write is a single upload, and appending is left to the
caller's layout (see the metrics log in lib/runstore.py).

URLs go through fsspec (gcsfs for gs://), the same library etils.epath and orbax use for them.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import fsspec

# Which package serves each URL scheme, for the error when it is missing.
_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def filesystem(url) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem serving `url`; a clear error naming the package when it is missing."""
    url = os.fspath(url)
    scheme = url.split("://", 1)[0]
    try:
        return fsspec.filesystem(scheme)
    except ImportError as e:
        package = _PACKAGES.get(scheme, f"the fsspec implementation for {scheme}://")
        raise ImportError(
            f"{url}: {scheme}:// paths need the {package} package: pip install {package} "
            f"(or reinstall this project, which depends on it: pip install -e .)"
        ) from e
    except ValueError as e:  # fsspec: "Protocol not known"
        raise ValueError(f"{url}: unsupported storage scheme {scheme}:// ({e})") from e


def read_bytes(path) -> bytes | None:
    """The file's content, or None when it does not exist."""
    path = os.fspath(path)
    try:
        if is_url(path):
            return filesystem(path).cat_file(path)
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_many(paths: list) -> list[bytes | None]:
    """`read_bytes` of each path; an object store fetches them concurrently (one round trip)."""
    paths = [os.fspath(p) for p in paths]
    urls = [p for p in paths if is_url(p)]
    if not urls:
        return [read_bytes(p) for p in paths]
    fs = filesystem(urls[0])
    fetched = fs.cat(urls, on_error="return")  # keyed by the path without its scheme

    def value(p):
        if not is_url(p):
            return read_bytes(p)
        got = fetched.get(fs._strip_protocol(p))
        if isinstance(got, FileNotFoundError):
            return None
        if isinstance(got, BaseException):
            raise got
        return got

    return [value(p) for p in paths]


def write_bytes(path, data: bytes) -> None:
    """Replace the file's content atomically: a reader or a relaunch never sees half of it."""
    path = os.fspath(path)
    if is_url(path):
        try:
            filesystem(path).pipe_file(path, data)  # one upload request: atomic, no rename needed
        except FileNotFoundError as e:  # an upload only 404s when the bucket is missing
            scheme, rest = path.split("://", 1)
            bucket = rest.split("/", 1)[0]
            hint = f"; create it, e.g. gcloud storage buckets create gs://{bucket}" if scheme == "gs" else ""
            raise FileNotFoundError(
                f"cannot write {path}: bucket {bucket} does not exist (or these credentials cannot see it){hint}"
            ) from e
        return
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic on POSIX filesystems


def append_bytes(path, data: bytes) -> None:
    """Append to a local file. Object stores cannot append: callers write new objects instead."""
    path = os.fspath(path)
    if is_url(path):
        raise ValueError(f"{path}: objects cannot be appended to; write a new object instead")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def list_dir(path) -> list[str]:
    """Names of the entries directly under `path` (files and folders), sorted; [] if none."""
    path = os.fspath(path)
    if not is_url(path):
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs = filesystem(path)
    try:
        # refresh: another process (a sweep worker, the run itself) may have written since the
        # last listing, which gcsfs would otherwise serve from its cache.
        entries = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    prefix = fs._strip_protocol(path).rstrip("/") + "/"
    return sorted({e.rstrip("/")[len(prefix):] for e in entries if e.rstrip("/").startswith(prefix)} - {""})


def delete(paths: list) -> None:
    """Remove these files; ones already gone are fine (a previous attempt may have removed them)."""
    paths = [os.fspath(p) for p in paths]
    urls = [p for p in paths if is_url(p)]
    if urls:
        try:
            filesystem(urls[0]).rm(urls)  # batched on GCS
        except FileNotFoundError:
            pass
    for p in paths:
        if not is_url(p):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass


def default_data_root(workdir) -> str:
    """Where the token store goes when the config names none: next to the run folder for a local
    run (`<workdir>/../.data`, shared by a sweep's runs); for a URL run a local folder, because the
    store is memory-mapped: `<tmp>/scaling-data-<uid>` (a cache: a missing store is rebuilt, with
    the same key, so a resume still checks it is the same data). Large corpora: set data.data_root."""
    workdir = os.fspath(workdir)
    if is_url(workdir):
        return os.path.join(tempfile.gettempdir(), f"scaling-data-{os.getuid()}")
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), ".data")
