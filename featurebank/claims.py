"""Work claims, so that several ``extract`` processes on one cache (one host or many) split the work.

The images to compute are grouped into buckets by the first hex digits of their content hash, so
every writer agrees on the buckets whatever it has seen of the cache. A writer's *lease* is the file
``writers/<host>~<pid>~<run>``, which holds its own name and whose modification time a heartbeat
thread refreshes. A writer claims a bucket by hard-linking ``claims/<bucket>`` to its lease:
``link()`` fails if the name exists, atomically, on local disks and over NFS (the classic NFS-safe
lock), allocates no inode (``bench/claims.py``: 256 claims in 1.7 ms, against 4–6 ms for 256 O_EXCL
file creations, more while shards are fsynced), and the claim names its owner from the first instant.
Where a file system has no hard links, claims are created with O_EXCL and the lease's name written
into them.

A claim is void when its writer's lease is gone or stale (no heartbeat for ``lease_seconds``), or
when the writer ran on this host and its process is dead, so a crashed writer holds nothing for
long. A void claim is taken over by renaming it aside first (only one writer's rename succeeds).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

from featurebank.files import HOST, process_alive

# 256 buckets: few enough that claiming costs little in small runs (each claim is a file creation
# on the writer's critical path), many enough to share work evenly: ~4,000 images each at 1M images,
# a few seconds of a GPU's work, so writers finishing together wait at most one bucket.
BUCKET_DIGITS = 2


def bucket_of(sha256: str) -> str:
    return sha256[:BUCKET_DIGITS]


class WorkClaims:
    """This writer's lease and claims in a shard folder; a context manager that heartbeats while open."""

    def __init__(self, shard_dir: Path, *, lease_seconds: float = 60.0):
        self.claim_dir = shard_dir / "claims"
        self.writer_dir = shard_dir / "writers"
        self.lease_seconds = lease_seconds
        self.lease = self.writer_dir / f"{HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}"
        self.held: set[str] = set()
        self._hard_links = True  # until a link() fails for another reason than an existing name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkClaims:
        self.claim_dir.mkdir(exist_ok=True)
        self.writer_dir.mkdir(exist_ok=True)
        self._forget_dead_writers()
        self.lease.write_text(f"{self.lease.name}\n")  # a claim is a hard link to it: reading a claim names its owner
        self._thread = threading.Thread(target=self._heartbeat, name="featurebank-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Give up every claim and the lease (call only after this writer's shards are committed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for bucket in list(self.held):
            with contextlib.suppress(OSError):
                if self._owns(self.claim_dir / bucket):  # not if another writer took it over meanwhile
                    (self.claim_dir / bucket).unlink()
        self.held.clear()
        with contextlib.suppress(OSError):
            self.lease.unlink()

    def _forget_dead_writers(self) -> None:
        """Remove the leases of this host's dead writers and of writers silent for ten lease periods,
        and claim files of another bucket size (left by a crashed writer of an older featurebank)."""
        for claim in self.claim_dir.iterdir():
            if len(claim.name) != BUCKET_DIGITS and not claim.name.startswith("."):
                with contextlib.suppress(OSError):
                    claim.unlink()
        for lease in self.writer_dir.iterdir():
            host, pid = (lease.name.split("~") + ["", ""])[:2]
            with contextlib.suppress(OSError):
                dead = host == HOST and pid.isdigit() and not process_alive(int(pid))
                if dead or time.time() - lease.stat().st_mtime > 10 * self.lease_seconds:
                    lease.unlink()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            with contextlib.suppress(OSError):
                os.utime(self.lease)

    def claim(self, bucket: str) -> bool:
        """Try to own ``bucket``; True if this writer now holds it (or already did)."""
        if bucket in self.held:
            return True
        path = self.claim_dir / bucket
        for _ in range(2):
            try:
                self._create_claim(path)
            except FileExistsError:
                if not self._void(path):
                    return False
                aside = path.with_name(f".void~{HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(path, aside)  # only one of the writers taking it over succeeds
                except FileNotFoundError:
                    return False
                with contextlib.suppress(OSError):
                    aside.unlink()
                continue
            self.held.add(bucket)
            return True
        return False

    def _create_claim(self, path: Path) -> None:
        """``path`` made to name this writer's lease, atomically; FileExistsError if another writer has it."""
        if self._hard_links:
            try:
                os.link(self.lease, path)
                return
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system (FAT, some SMB shares): create the file instead
                self._hard_links = False
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.lease.name)

    def _owns(self, claim: Path) -> bool:
        if self._hard_links:
            return claim.stat().st_ino == self.lease.stat().st_ino
        return claim.read_text().strip() == self.lease.name

    def others_present(self) -> bool:
        """Whether any other writer has a lease file here (live or not): only then can shards appear unseen."""
        try:
            return any(entry.name != self.lease.name for entry in os.scandir(self.writer_dir))
        except OSError:
            return True

    def _void(self, claim: Path) -> bool:
        try:
            owner = claim.read_text().strip()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if not owner:  # created but not yet written: give its writer a moment
            with contextlib.suppress(OSError):
                return time.time() - claim.stat().st_mtime > self.lease_seconds
            return True
        lease = self.writer_dir / owner
        try:
            age = time.time() - lease.stat().st_mtime
        except FileNotFoundError:
            return True
        host, pid = owner.split("~")[:2]
        if host == HOST and pid.isdigit() and not process_alive(int(pid)):
            return True
        return age > self.lease_seconds
