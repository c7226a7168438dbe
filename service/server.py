"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT.

uvicorn's own handling of SIGTERM closes the listening socket at once and then waits for open
connections, so a load balancer sees refused connections instead of a 503 and ``/readyz``
never reports the drain. ``DrainingServer`` replaces it: the first SIGTERM (or Ctrl+C) marks the
service draining (``/readyz`` and new ``/upscale`` answer 503 + Retry-After while the socket
stays open), waits until every accepted request has finished or ``drain_timeout_s`` passed,
and only then lets uvicorn shut down (close the socket, finish the connections, run the
lifespan shutdown). A second Ctrl+C forces the exit. The process exits 0 after a drain.
"""
from __future__ import annotations

import logging
import signal
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import create_app
from .config import Settings

log = logging.getLogger("srserve.service")

SHUTDOWN_GRACE_S = 5.0  # after the drain: for responses still being written to slow clients


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers: a client that opens a
    connection and trickles (or never finishes) its request line and headers is disconnected
    after ``header_timeout_s`` instead of holding the connection (slowloris). The deadline runs
    from the connection and again after each response; it stops once a request's headers are in
    (the body has its own bound, ``SR_BODY_TIMEOUT_S``)."""

    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def _cancel_header_deadline(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers took over %.0fs", self.header_timeout_s)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": float(seconds)})


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service, drain_timeout_s: float):
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        """Signal handler: start the drain (on_tick finishes it); a second SIGINT forces exit."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            return
        if sig == signal.SIGINT:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self.drain_started is None:
            return False
        self.service.begin_drain()
        if self.service.inflight == 0:
            log.info("drained in %.2fs; shutting down", time.monotonic() - self.drain_started)
            return True
        if time.monotonic() - self.drain_started > self.drain_timeout_s:
            log.warning("drain timeout (%.0fs): %d request(s) still in flight; shutting down",
                        self.drain_timeout_s, self.service.inflight)
            return True
        return False


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("srserve").setLevel(level.upper())


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    app = create_app(settings)
    app.state.service.engine.check()  # a wrong repository or model name fails here, in one line
    app.state.service.jobs.open()  # so does a jobs spool in use or an unreachable Redis
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            lifespan="on", timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S), access_log=True,
                            http=header_timeout_protocol(settings.header_timeout_s))
    server = DrainingServer(config, app.state.service, settings.drain_timeout_s)
    log.info("srserve on http://%s:%d (%s, %s)", settings.host, settings.port, settings.device, settings.backend)
    server.run()
    return 0 if server.started or server.drain_started is not None else 1
