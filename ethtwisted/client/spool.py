"""
The spool: a directory that keeps the outbox and the follower's checkpoint across restarts,
written atomically on a thread of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ethtwisted.frames import MAX_WIRE_INT, Sighting
from ethtwisted.logs import Logger, describe
from ethtwisted.protocol import SOURCES, ProtocolError, loads_bounded, parse_block, payload_hash

log = Logger(namespace="ethtwisted.client")


class SpoolError(Exception):
    """
    The spool directory cannot be used; the message says why.
    """


def _write_atomically(path: str, data: bytes) -> None:
    """
    Replace C{path} by C{data}: written to a temporary file, flushed to disk, renamed over it,
    so a crash leaves either the old content or the new, never a mix.
    """
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _unusable_block(payload: bytes) -> bool:
    """
    Whether C{payload} is a JSON block message (all the client sends starting with C{{}) that
    does not hold a block which can be real.
    """
    return payload.startswith(b"{") and parse_block(payload) is None


def _sighting(payload: bytes, kept: object) -> Sighting | None:
    """
    The sighting a batch file kept for C{payload}, if it is one: C{{"seen_ms": int, "via":
    source}}, else L{None}.
    """
    if not isinstance(kept, dict):
        return None
    seen_ms, via = kept.get("seen_ms"), kept.get("via")
    if type(seen_ms) is not int or not 0 <= seen_ms <= MAX_WIRE_INT:
        return None
    if not isinstance(via, str) or via not in SOURCES:
        return None
    return Sighting(payload_hash(payload), seen_ms, via)


class Spool:
    """
    A directory that keeps the outbox and the follower's checkpoint across restarts.

    Each group of payloads queued together is one file, C{batch-<sequence>.json}, removed once
    all its payloads are acknowledged (or dropped): C{{"payloads": [text, ...], "sightings":
    [{"seen_ms": int, "via": source} or null, ...]}}, the sightings in the payloads' order (files
    of older clients have none); the checkpoint is C{state.json}.  Every
    file is replaced atomically.  A lock file keeps a second client off the same directory.

    The methods that touch files block.  Once the reactor runs, they go through L{call}: one
    thread of the spool's own runs them one at a time, in the order they were asked for.
    C{reactor} is the one their results go back to.
    """

    STATE = "state.json"

    def __init__(self, directory: str, reactor: Any) -> None:
        self.directory = os.path.abspath(directory)
        self.reactor = reactor
        self._thread = ThreadPool(1, 1, "spool")
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lock: IO[bytes] | None = open(  # noqa: SIM115 -- held until close()
                os.path.join(self.directory, "lock"), "ab"
            )
        except OSError as e:
            raise SpoolError(f"cannot use {self.directory}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock.close()
            self._lock = None
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"{self.directory} is in use by another eth-client") from None
            raise SpoolError(f"cannot lock {self.directory}: {e.strerror}") from None

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _batch_path(self, sequence: int) -> str:
        return self._path(f"batch-{sequence:012d}.json")

    @staticmethod
    def _read(path: str) -> Any:
        with open(path, "rb") as f:
            return loads_bounded(f.read())

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(self, path: str, obj: Any) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        try:
            _write_atomically(path, data)
            self._sync_directory()
        except OSError as e:
            raise SpoolError(f"{path}: {e.strerror}") from None

    def load_batches(self) -> list[tuple[int, list[tuple[bytes, Sighting | None]]]]:
        """
        The batches on disk, oldest first, each payload with its sighting if one was kept.  A
        file that cannot be read is renamed aside; a sighting that is not one is left out.
        """
        batches = []
        for name in sorted(os.listdir(self.directory)):
            path = self._path(name)
            if name.endswith(".tmp"):
                os.unlink(path)  # an interrupted write; the file it was for is intact
                continue
            if not (name.startswith("batch-") and name.endswith(".json")):
                continue
            try:
                sequence = int(name[len("batch-") : -len(".json")])
                obj = self._read(path)
                payloads = [p.encode("utf-8") for p in obj["payloads"]]
                kept = obj.get("sightings")
            except (OSError, ProtocolError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("unreadable spool file {path} ({reason}): set aside as .bad",
                          path=path, reason=describe(e))  # fmt: skip
                os.replace(path, path + ".bad")
                continue
            # An older client may have spooled a block message built from a node's absurd
            # answer (a 160-bit chain id, say), which a server cannot store as a block.
            if not isinstance(kept, list) or len(kept) != len(payloads):
                kept = [None] * len(payloads)
            usable = [(p, _sighting(p, k)) for p, k in zip(payloads, kept, strict=True)
                      if not _unusable_block(p)]  # fmt: skip
            if len(usable) < len(payloads):
                log.warn("spool file {path}: dropped {n} block messages that hold no usable "
                         "block", path=path, n=len(payloads) - len(usable))  # fmt: skip
            batches.append((sequence, usable))
        batches.sort()
        return batches

    def write_batch(
        self,
        sequence: int,
        payloads: Sequence[bytes],
        sightings: Sequence[Sighting | None] = (),
    ) -> None:
        """
        Write a batch: C{payloads}, and the sightings of as many of them, in order.
        """
        obj: dict[str, Any] = {"payloads": [p.decode("utf-8") for p in payloads]}
        if any(sightings):
            obj["sightings"] = [
                None if s is None else {"seen_ms": s.seen_ms, "via": s.via} for s in sightings
            ]
        self._write(self._batch_path(sequence), obj)

    def remove_batch(self, sequence: int) -> None:
        """
        Remove a batch (gone already is fine); L{SpoolError} if it cannot be.
        """
        try:
            os.unlink(self._batch_path(sequence))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SpoolError(f"cannot remove acknowledged spool batch {sequence}: "
                             f"{e.strerror}") from None  # fmt: skip

    def load_state(self) -> Any:
        """
        The saved state, or L{None} if there is none (or it is unreadable, which is logged).
        """
        path = self._path(self.STATE)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, ProtocolError) as e:
            log.error("unreadable spool file {path} ({reason}): starting from the node's head",
                      path=path, reason=describe(e))  # fmt: skip
            return None

    def write_state(self, state: Any) -> None:
        self._write(self._path(self.STATE), state)

    def call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run C{f(*args)} on the spool's thread after everything asked for before; the
        Deferred fires with its result (in the reactor thread).
        """
        if self._lock is None:
            return fail(SpoolError(f"{self.directory}: the spool is closed"))
        if not self._thread.started:
            self._start_thread()
        return deferToThreadPool(self.reactor, self._thread, f, *args)

    def _start_thread(self) -> None:
        self._thread.start()
        # The thread is not a daemon: should the spool not be closed (a stop that failed),
        # stopping it at shutdown, as adbapi does with its pool, lets the process exit.
        self._shutdown = self.reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_thread
        )

    def _stop_thread(self) -> None:
        if self._thread.started:
            self._thread.stop()

    def close(self) -> Deferred[None]:
        """
        Once everything asked for is done: stop the spool's thread and unlock the directory.
        """
        done: Deferred[None] = self.call(lambda: None) if self._thread.started else succeed(None)
        return done.addCallback(self._closed)

    def _closed(self, _: None) -> None:
        if self._thread.started:
            self.reactor.removeSystemEventTrigger(self._shutdown)
            self._stop_thread()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
