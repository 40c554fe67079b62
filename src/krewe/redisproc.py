"""A local `redis-server` for the demo and the tests: a free loopback port, its own directory.

    with RedisServer.start(directory) as server:
        settings.store = server.url

The server writes an append-only file with `appendfsync always`, the durability the shared ledger
requires (docs/operations.md), and no RDB snapshots. It is started on 127.0.0.1 only and stopped by
PID; `kill` (SIGKILL) and `start` on the same directory replay the append-only file, as a crashed
production server would.
"""

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from krewe.devchain import free_port

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]


class RedisServerError(RuntimeError):
    """redis-server could not be found, started, or reached."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerError(
            "redis-server not found: sudo apt-get update && sudo apt-get install -y redis-server"
        )
    return found


class RedisServer:
    """A running redis-server process on 127.0.0.1."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    def __repr__(self) -> str:
        return f"RedisServer(pid={self.process.pid}, url={self.url!r})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, directory: Path, *, port: int | None = None, timeout_s: float = 15.0) -> "RedisServer":
        """Start redis-server on `port` (a free one if None) keeping its files in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        command = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        server = cls(process, port, directory)
        client = redis.Redis(port=port, socket_timeout=1.0)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if process.poll() is not None:
                    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                    log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RedisServerError(f"redis-server exited with {process.returncode}: {error}{log}")
                try:
                    if client.ping():
                        break
                except redis.RedisError:  # not listening, or still loading its append-only file
                    if time.monotonic() > deadline:
                        server.stop()
                        raise RedisServerError(
                            f"redis-server did not answer on {server.url} within {timeout_s} s"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()
        return server

    def kill(self) -> None:
        """SIGKILL: what the append-only file holds is all that survives."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_pipe()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
