"""Claims: a run is claimed before it is trained, so two launchers on one root never train it twice.

    <run dir>/claim.json   {"host", "pid", "token", "started_at", "heartbeat_at"}

A claim is created only if none exists (locally a hard link of a written temp file: O_EXCL
semantics with the content in place; on gs:// one upload with ifGenerationMatch=0), so exactly
one launcher wins. The holder refreshes `heartbeat_at` every STALE_AFTER_S / 10 from a thread,
and deletes the claim when the run leaves its pack. A claim is stale -- its holder is gone -- when
its heartbeat is older than STALE_AFTER_S, or at once when its holder is a process of this host
that no longer exists (a kill -9); a stale claim is taken over by a conditional replace (the
version read must still be there: the generation on gs://, the bytes under an flock locally), so
of two launchers that find it stale one takes it. A refresh is conditional too: a holder whose
claim was taken over (it stalled for longer than the timeout) stops refreshing it and says so on
stderr (it does not stop training that run: pick a timeout well above any stall).

Why heartbeats and no lock service: the root may be a bucket shared by hosts with nothing else in
common, and a killed process must not hold its runs forever. The timeout (SCALING_CLAIM_STALE_S,
default 300 s) is far above a heartbeat period and any clock skew between hosts, and short next
to a preempted run's relaunch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid

from lib.store import storage

CLAIM = "claim.json"
STALE_AFTER_S = 300.0


def stale_after_s() -> float:
    """The stale timeout: SCALING_CLAIM_STALE_S if set (seconds), else STALE_AFTER_S."""
    value = os.environ.get("SCALING_CLAIM_STALE_S")
    try:
        timeout = float(value) if value else STALE_AFTER_S
    except ValueError:
        raise ValueError(f"SCALING_CLAIM_STALE_S must be a number of seconds, got {value!r}") from None
    if timeout <= 0:
        raise ValueError(f"SCALING_CLAIM_STALE_S must be > 0 seconds, got {value!r}")
    return timeout


@dataclasses.dataclass
class Holder:
    """Who holds a claim, as read from claim.json."""

    host: str
    pid: int
    token: str
    started_at: float
    heartbeat_at: float

    def stale_reason(self, timeout: float, now: float | None = None) -> str | None:
        """Why this holder is gone (None: it is alive as far as can be told)."""
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not _alive(self.pid):
            return f"process {self.pid} on {self.host} no longer exists"
        if now - self.heartbeat_at > timeout:
            return f"no heartbeat for {now - self.heartbeat_at:.0f}s (timeout {timeout:.0f}s)"
        return None

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"

    def last_heartbeat(self, now: float | None = None) -> str:
        ago = (time.time() if now is None else now) - self.heartbeat_at
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.heartbeat_at))
        return f"{when}, {_ago(ago)} ago"


def holder(run_path) -> Holder | None:
    """The claim on the run at `run_path`, or None. A claim that cannot be parsed reads as a
    holder long gone (it can only come from outside this code: claims are written whole)."""
    got = storage.read_versioned(_claim_path(run_path))
    return None if got is None else _parse(got[0])


class Claims:
    """The claims this process holds, kept alive by one heartbeat thread."""

    def __init__(self, timeout: float | None = None):
        self.timeout = stale_after_s() if timeout is None else timeout
        self._held: dict[str, tuple[str, float, object]] = {}  # claim path -> (token, started_at, version)
        self._lock = threading.Lock()
        # A heartbeat's rewrite and a release's delete of one claim never interleave: a beat that
        # rewrote the claim after the release read its version would leave it behind, held by nobody.
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.messages: list[str] = []  # takeovers, for the caller to print

    def acquire(self, run_path) -> Holder | None:
        """Claim the run: None when this process now holds it, else the live holder."""
        path = _claim_path(run_path)
        for _ in range(5):  # a claim released or taken over between our reads: look again
            token = uuid.uuid4().hex
            now = time.time()
            version = storage.create_new(path, _record(token, now, now))
            if version is not None:
                return self._hold(path, token, now, version)
            got = storage.read_versioned(path)
            if got is None:
                continue
            other = _parse(got[0])
            if other.token == token:  # our create went through, its answer was lost (a retried request)
                return self._hold(path, token, now, got[1])
            why = other.stale_reason(self.timeout)
            if why is None:
                return other
            version = storage.replace_if(path, _record(token, now, now), got[1])
            if version is not None:
                self.messages.append(f"{run_path}: took over the claim of {other.describe()} ({why})")
                return self._hold(path, token, now, version)
        raise RuntimeError(f"{path}: the claim changed five times while it was read; is something rewriting it?")

    def release(self, run_path) -> None:
        self._release(_claim_path(run_path))

    def release_all(self) -> None:
        for path in list(self._held):
            self._release(path)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _release(self, path: str) -> None:
        with self._io:
            with self._lock:
                held = self._held.pop(path, None)
            if held is not None:
                storage.delete_if(path, held[2])

    def _hold(self, path: str, token: str, started_at: float, version) -> None:
        with self._lock:
            self._held[path] = (token, started_at, version)
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
            self._thread.start()
        return None

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 10):
            with self._lock:
                paths = list(self._held)
            for path in paths:
                self._beat_one(path)

    def _beat_one(self, path: str) -> None:
        """Rewrite one held claim's heartbeat; under self._io, so no release of it runs meanwhile."""
        with self._io:
            with self._lock:
                if path not in self._held:
                    return  # released meanwhile
                token, started_at, version = self._held[path]
            try:
                new = storage.replace_if(path, _record(token, started_at, time.time()), version)
            except Exception as e:  # noqa: BLE001  (a network blip: the next beat tries again)
                print(f"warning: {path}: heartbeat failed ({type(e).__name__}: {e}); retrying", file=sys.stderr, flush=True)
                return
            with self._lock:
                if new is None:
                    self._held.pop(path)
                    print(f"warning: {path}: claim lost to another process (this one stalled past {self.timeout:.0f}s)",
                          file=sys.stderr, flush=True)
                else:
                    self._held[path] = (token, started_at, new)


def _claim_path(run_path) -> str:
    run_path = os.fspath(run_path).rstrip("/")
    return f"{run_path}/{CLAIM}" if storage.is_url(run_path) else os.path.join(run_path, CLAIM)


def _record(token: str, started_at: float, heartbeat_at: float) -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "started_at": started_at, "heartbeat_at": heartbeat_at}).encode()


def _parse(data: bytes) -> Holder:
    try:
        d = json.loads(data)
        return Holder(str(d["host"]), int(d["pid"]), str(d["token"]), float(d["started_at"]), float(d["heartbeat_at"]))
    except (ValueError, KeyError, TypeError):
        return Holder("?", -1, "", 0.0, 0.0)  # unreadable: as a holder whose heartbeat stopped in 1970


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class RunClaimed(RuntimeError):
    """Another live process holds the run's claim: it was not trained here."""

    def __init__(self, run_path, holder: Holder | None, summary: dict | None = None):
        self.holder = holder
        self.summary = summary  # set when another process finished the run while this one looked
        who = holder.describe() if holder else "another process"
        super().__init__(f"claimed by {who}" + (f" (last heartbeat {holder.last_heartbeat()})" if holder else "")
                         if summary is None else "finished by another process meanwhile")
        self.run_path = os.fspath(run_path)
