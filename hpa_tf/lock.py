"""One owner per output folder: a lock file that a killed owner cannot leave behind for good.

``with FolderLock(out, "tfrecord_builder build"):`` holds ``OUT/.hpa-tf.lock``, or raises
:class:`LockError` naming the process that holds it. A lock is stale, and taken over, when its
owner is gone: on the same host its process id is no longer alive (``kill -9`` included); on
another host or on ``gs://`` (where a dead process cannot be seen) when its heartbeat, refreshed
every ``HEARTBEAT`` seconds, is older than ``STALE_AFTER``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from hpa_tf import fs

NAME = ".hpa-tf.lock"
HEARTBEAT = 30.0
STALE_AFTER = 300.0


class LockError(RuntimeError):
    """Another process owns the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class FolderLock:
    """``FolderLock(folder, what)``: a context manager that owns ``folder`` for one process."""

    def __init__(self, folder: str, what: str):
        self.folder, self.what = folder, what
        self.path = fs.join(folder, NAME)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.local = "://" not in folder

    def _record(self) -> dict:
        return {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "started": time.time(), "heartbeat": time.time()}

    def _stale(self, owner: dict) -> bool:
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _alive(owner["pid"])
        return time.time() - float(owner.get("heartbeat", 0)) > STALE_AFTER

    def _read(self) -> dict | None:
        try:
            return json.loads(fs.read_text(self.path))
        except Exception:  # noqa: BLE001 - gone, or half-written by a killed owner: nobody holds it
            return None

    def _try_create(self) -> bool:
        record = json.dumps(self._record())
        if self.local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(record)
            return True
        if fs.exists(self.path):
            return False
        fs.write_text(self.path, record)  # object stores: write, then check that ours is the one that stayed
        time.sleep(0.5)
        owner = self._read()
        return bool(owner) and owner.get("token") == self.token

    def acquire(self) -> FolderLock:
        fs.makedirs(self.folder)
        for _ in range(3):
            if self._try_create():
                if not self.local:
                    self._thread = threading.Thread(target=self._beat, daemon=True)
                    self._thread.start()
                return self
            owner = self._read()
            if owner is None or self._stale(owner):
                fs.remove(self.path)  # its owner died (kill -9, a lost machine): take over
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
            raise LockError(
                f"{self.folder} is in use by {owner.get('what', 'another run')} (process {owner.get('pid')} on "
                f"{owner.get('host')}, since {since}); wait for it to finish, use another folder, or remove "
                f"{self.path} if that process is gone")
        raise LockError(f"could not take the lock {self.path}; remove it if no other run uses {self.folder}")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            owner = self._read()
            if owner and owner.get("token") == self.token:
                owner["heartbeat"] = time.time()
                fs.write_text(self.path, json.dumps(owner))

    def release(self) -> None:
        self._stop.set()
        owner = self._read()
        if owner and owner.get("token") == self.token:
            fs.remove(self.path)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
