"""A local, append-only file of usage events the store could not take.

When the gateway stops while the usage store (Redis) is unreachable, the
events still buffered are appended here, one JSON object a line, instead of
being lost. The next start claims the file and replays it: the store counts
each request id once (``UsageStore.record`` is idempotent), so an event
replayed twice, after a crash in the middle of a replay say, counts once.

Several processes may share one path (``--workers``): appends hold an
exclusive ``flock`` on the file. A process claims the file by renaming it
to ``<path>.<pid>.replay`` under that lock and holds a lock on its claim
until the events are written, then deletes it; a claim whose process died
(its lock gone) is picked up by the next process that starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, Any

from gateway.metering.model import UsageEvent

log = logging.getLogger("llmgw.gateway.metering")

_FIELDS = frozenset(f.name for f in fields(UsageEvent))


def encode(event: UsageEvent) -> str:
    """One spool line (without the newline)."""
    return json.dumps(asdict(event), separators=(",", ":"))


def decode(line: str) -> UsageEvent:
    """An event from a spool line; ValueError if the line is not one."""
    data: Any = json.loads(line)
    if not isinstance(data, dict) or set(data) - _FIELDS:
        raise ValueError("not a usage event")
    return UsageEvent(**data)


@contextlib.contextmanager
def _locked(path: Path, mode: str, blocking: bool = True) -> Iterator[IO[str] | None]:
    """``path`` opened with an exclusive flock held (None if non-blocking and taken)."""
    try:
        handle = open(path, mode)  # noqa: SIM115 - closed below, after the lock
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield None
            return
        yield handle
    finally:
        handle.close()  # releases the lock


class UsageSpool:
    """Append-only JSON-lines spool of usage events (see the module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0  # unreadable lines seen by the last claim
        self._claims: list[tuple[Path, IO[str]]] = []

    def append(self, events: Sequence[UsageEvent]) -> None:
        """Append ``events`` and fsync; raises OSError if the file cannot be written."""
        if not events:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = "".join(encode(e) + "\n" for e in events)
        while True:
            with _locked(self.path, "a", blocking=True) as handle:
                assert handle is not None
                # A replay may have claimed (renamed) the file while we waited for
                # the lock: write only to the file that is still at ``path``.
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = -1
                if os.fstat(handle.fileno()).st_ino != current:
                    continue
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
                return

    def claim(self) -> list[UsageEvent]:
        """Take over the spool and any claim left by a dead process; return their events.

        Lines that do not parse are logged and skipped (counted in ``skipped``).
        """
        self.skipped = 0
        directory = self.path.parent
        if not directory.is_dir():
            return []
        with _locked(self.path, "r", blocking=True) as handle:
            if handle is not None:  # rename under the lock: no append is lost
                os.replace(self.path, self._claim_path())
        events: list[UsageEvent] = []
        for candidate in sorted(directory.glob(self.path.name + ".*.replay")):
            handle = open(candidate)  # noqa: SIM115 - kept open (and locked) until release
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()  # another live process is replaying it
                continue
            if not candidate.exists():  # replayed and deleted meanwhile
                handle.close()
                continue
            self._claims.append((candidate, handle))
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    events.append(decode(line))
                except (ValueError, TypeError):
                    self.skipped += 1
                    log.error(
                        "usage spool %s line %d is not a usage event: skipped", candidate, number
                    )
        return events

    @property
    def claimed(self) -> bool:
        """Whether claimed files wait to be released."""
        return bool(self._claims)

    def release(self) -> None:
        """Delete the claimed files: their events are in the store (or spooled anew)."""
        for path, handle in self._claims:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            handle.close()
        self._claims.clear()

    def abandon(self) -> None:
        """Let the claimed files go without deleting them (the next start replays them)."""
        for _, handle in self._claims:
            handle.close()
        self._claims.clear()

    def _claim_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.{os.getpid()}.replay")
