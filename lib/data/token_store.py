"""A tokenized corpus on disk, built once and shared by every run and host: token files + a manifest.

Layout of `<data_root>/<key>/` (key = readable prefix + hash of what determines the tokens):
  tokens.bin       training tokens, documents each followed by end-of-text, in the narrowest
                   unsigned type for the vocabulary (uint8 / uint16 / uint32), read through np.memmap
  eval_tokens.bin  held-out tokens, same format
  tokenizer.json   the trained / pretrained tokenizer (absent for bytes)
  manifest.json    written LAST: the key's inputs, tokenizer, dtype, counts, and the sha256 and
                   size of every file above

A store is used only when its manifest parses, names this key and format, and every file's size
and sha256 match; anything else (missing manifest = partial build, a flipped byte = corruption)
is rebuilt, with a warning saying why. Builds go into a temp folder renamed into place, under an
fcntl lock so concurrent builders on one machine build once; builders that cannot share the lock
(other hosts) race harmlessly: the first rename wins and the others use its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from typing import Callable

import numpy as np

STORE_FORMAT = 1
MANIFEST = "manifest.json"
TRAIN_FILE, EVAL_FILE, TOKENIZER_FILE = "tokens.bin", "eval_tokens.bin", "tokenizer.json"

log = logging.getLogger(__name__)
# Stores verified by this process, by path -> file stat signature: a sweep opening the same store
# for every run hashes it once; any change to a file's size, mtime or inode re-verifies it.
_verified: dict[str, tuple] = {}


class InvalidStore(Exception):
    """The store on disk cannot be used (the message says why); it will be rebuilt."""


class StoreAbsent(InvalidStore):
    """No store under that key yet."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type holding ids 0..vocab_size-1 (bytes: uint8, most BPEs: uint16)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} does not fit in uint32")


def store_key(inputs: dict, label: str) -> str:
    """`label-<hash>`: readable at a glance, unique for the inputs (JSON-serialisable)."""
    blob = json.dumps({"format": STORE_FORMAT, **inputs}, sort_keys=True, separators=(",", ":")).encode()
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")[:48]
    return f"{slug}-{hashlib.sha256(blob).hexdigest()[:16]}"


# ================================================================================================
# reading
# ================================================================================================
class TokenStore:
    def __init__(self, path: str, manifest: dict):
        self.path, self.manifest = path, manifest
        self.key = manifest["key"]
        self.dtype = np.dtype(manifest["dtype"])

    def tokens(self, which: str) -> np.ndarray:
        """Memory-mapped tokens, "train" or "eval" (read-only; pages load on use)."""
        name = {"train": TRAIN_FILE, "eval": EVAL_FILE}[which]
        if self.manifest["files"][name]["bytes"] == 0:
            return np.zeros(0, self.dtype)  # np.memmap refuses empty files
        return np.memmap(os.path.join(self.path, name), dtype=self.dtype, mode="r")

    @property
    def tokenizer_file(self) -> str | None:
        return os.path.join(self.path, TOKENIZER_FILE) if TOKENIZER_FILE in self.manifest["files"] else None


def open_store(path: str, key: str, required: tuple[str, ...] = (TRAIN_FILE, EVAL_FILE)) -> TokenStore:
    """The store at `path`, verified against its manifest; raises InvalidStore otherwise.

    `required`: the data files the manifest must list (an image store has its own, lib/data/image_store.py)."""
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise StoreAbsent(path)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise InvalidStore("no manifest.json (a build was interrupted)") from None
    except (OSError, ValueError) as e:
        raise InvalidStore(f"unreadable manifest.json ({e})") from None
    if manifest.get("format") != STORE_FORMAT or manifest.get("key") != key:
        raise InvalidStore(f"manifest is for format {manifest.get('format')} / key {manifest.get('key')}")
    files = manifest.get("files") or {}
    if any(name not in files for name in required):
        raise InvalidStore(f"manifest lists none of {', '.join(n for n in required if n not in files)}")
    signature = []
    for name, meta in files.items():
        file_path = os.path.join(path, name)
        try:
            st = os.stat(file_path)
        except FileNotFoundError:
            raise InvalidStore(f"{name} is missing") from None
        if st.st_size != meta["bytes"]:
            raise InvalidStore(f"{name} has {st.st_size} bytes, the manifest says {meta['bytes']} (truncated or partial)")
        signature.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    if _verified.get(path) != tuple(signature):
        for name, meta in files.items():
            digest = file_sha256(os.path.join(path, name))
            if digest != meta["sha256"]:
                raise InvalidStore(f"{name} sha256 {digest[:12]}... does not match the manifest's {meta['sha256'][:12]}... (corrupt)")
        _verified[path] = tuple(signature)
    return TokenStore(path, manifest)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ================================================================================================
# writing
# ================================================================================================
class TokenWriter:
    """Appends token arrays to one file, checking their range and counting tokens (and unigrams)."""

    def __init__(self, path: str, vocab_size: int, count_unigrams: bool = False):
        self.path, self.vocab_size = path, vocab_size
        self.dtype = token_dtype(vocab_size)
        self.tokens = 0
        self.unigrams = np.zeros(vocab_size, np.int64) if count_unigrams else None
        self._f = open(path, "wb")

    def write(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        if int(ids.max()) >= self.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"token id outside [0, {self.vocab_size}) while writing {self.path}")
        if self.unigrams is not None:
            self.unigrams += np.bincount(ids, minlength=self.vocab_size)
        self._f.write(np.ascontiguousarray(ids, self.dtype).tobytes())
        self.tokens += len(ids)

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def open_or_build(root: str, key: str, build: Callable[[str], dict], required: tuple[str, ...] = (TRAIN_FILE, EVAL_FILE)) -> TokenStore:
    """The verified store `<root>/<key>`, building it with `build(tmp_dir) -> manifest fields` if needed.

    `build` writes the `required` files (and optionally TOKENIZER_FILE) into tmp_dir and returns
    the manifest's other fields (must include "dtype"); this function adds key, format and hashes."""
    path = os.path.join(root, key)
    with contextlib.suppress(InvalidStore):
        return open_store(path, key, required)
    os.makedirs(root, exist_ok=True)
    with _locked(os.path.join(root, f".{key}.lock"), key):
        try:  # someone may have finished building while we waited for the lock
            return open_store(path, key, required)
        except StoreAbsent:
            pass
        except InvalidStore as e:
            log.warning("token store %s is unusable (%s); rebuilding it", path, e)
            _remove(path, root)
        tmp = os.path.join(root, f".tmp-{key}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            t0 = time.perf_counter()
            fields = build(tmp)
            manifest = {"format": STORE_FORMAT, "key": key, **fields, "files": _describe_files(tmp, (*required, TOKENIZER_FILE))}
            manifest["build_seconds"] = round(time.perf_counter() - t0, 3)
            _write_json_atomic(os.path.join(tmp, MANIFEST), manifest)
            _fsync_dir(tmp)
            try:
                os.rename(tmp, path)
            except OSError:  # another host published first: use theirs if it is sound
                if not os.path.isdir(path):
                    raise
                log.warning("token store %s was published by another process; using it", path)
            else:
                _fsync_dir(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return open_store(path, key, required)


def _describe_files(folder: str, names: tuple[str, ...]) -> dict:
    return {
        name: {"bytes": os.path.getsize(os.path.join(folder, name)), "sha256": file_sha256(os.path.join(folder, name))}
        for name in sorted(os.listdir(folder))
        if name in names
    }


@contextlib.contextmanager
def _locked(lock_path: str, key: str):
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process building token store %s", key)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(path: str, root: str) -> None:
    """Move aside, then delete: the store's name is free at once, and readers with open maps are unaffected."""
    trash = os.path.join(root, f".trash-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
    _verified.pop(path, None)


def _write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
