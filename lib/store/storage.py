"""Where run files live: a local folder or an object-store URL (gs://...), behind a few operations.

Local paths keep POSIX semantics: a write goes to a temp file renamed over the target (atomic), an
append is an append. Object stores have neither: a rename on GCS is a copy + delete, and objects
cannot be appended to. But one object upload is atomic by itself (readers see the old object or
the new one, never half), so a URL write is a single upload, and appending is left to the
caller's layout (see the metrics log in lib/runstore.py).

URLs go through fsspec (gcsfs for gs://), the same library etils.epath and orbax use for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import uuid
from urllib.parse import quote

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


# -- conditional writes: what a claim on a run (lib/store/claims.py) is built from ------------------
# A "version" is what a conditional write must find to go ahead: on gs:// the object's generation
# (ifGenerationMatch: GCS checks it in the request, atomically); locally the file's bytes, compared
# and replaced while holding an flock on the folder (every conditional writer takes it).


def create_new(path, data: bytes):
    """Create the file with `data` unless it exists: its version, or None if it already existed.
    Atomic: no two callers both create it, and no reader sees it half written."""
    path = os.fspath(path)
    if is_url(path):
        return _gcs_upload(path, data, if_generation="0")
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)  # fails if the name exists (O_EXCL semantics), with the content in place
    except FileExistsError:
        return None
    finally:
        os.remove(tmp)
    return data


def read_versioned(path):
    """(content, version) of the file, or None when it does not exist."""
    path = os.fspath(path)
    if not is_url(path):
        data = read_bytes(path)
        return None if data is None else (data, data)
    fs, bucket, key = _gcs(path)
    try:
        headers, data = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media")
    except FileNotFoundError:
        return None
    return data, headers["x-goog-generation"]


def replace_if(path, data: bytes, version):
    """Replace the file with `data` if it is still at `version`: its new version, or None if it changed or went."""
    path = os.fspath(path)
    if is_url(path):
        return _gcs_upload(path, data, if_generation=str(version))
    with _folder_lock(path):
        if read_bytes(path) != version:
            return None
        write_bytes(path, data)
        return data


def delete_if(path, version) -> bool:
    """Delete the file if it is still at `version`; False if it changed or went."""
    path = os.fspath(path)
    if is_url(path):
        fs, bucket, key = _gcs(path)
        try:
            fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(version))
        except (FileNotFoundError, FileExistsError):  # gcsfs: 404 gone, 412 (precondition failed) changed
            return False
        finally:
            fs.invalidate_cache(path)
        return True
    with _folder_lock(path):
        if read_bytes(path) != version:
            return False
        os.remove(path)
        return True


def move(src, dst) -> None:
    """Rename a file (an object store copies, then deletes)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_url(src):
        filesystem(src).mv(src, dst)
    else:
        os.replace(src, dst)


def _gcs(path):
    fs = filesystem(path)
    bucket, key, _ = fs.split_path(path)
    return fs, bucket, key


def _gcs_upload(path, data: bytes, if_generation: str):
    """One upload with ifGenerationMatch: the new generation, or None if the precondition failed."""
    fs, bucket, key = _gcs(path)
    try:
        obj = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o", uploadType="media", name=key,
                      ifGenerationMatch=if_generation, data=data, headers={"Content-Type": "application/octet-stream"}, json_out=True)
    except FileExistsError:  # gcsfs raises it for 412 Precondition Failed
        return None
    finally:
        fs.invalidate_cache(path)
    return obj["generation"]


@contextlib.contextmanager
def _folder_lock(path):
    """An exclusive flock on the file's folder: local conditional writes take it, so compare-then-write is atomic."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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
