"""``conceptevo serve``: the dashboard, a local web app over one workspace.

A FastAPI app with a JSON API (below) and one page written for this project (``static/``:
HTML, CSS and JavaScript, no third-party file, nothing fetched from the network). It binds
127.0.0.1 unless told otherwise, sets no CORS header (other sites cannot read it), answers
only requests addressed to this machine by name (:class:`HostCheck`, against DNS rebinding),
validates every parameter (bad ones get a 4xx with a message) and builds every file path it
reads from validated run names and integers; every file it reads or writes must be a regular
file inside the workspace (``Workspace.contained``). A damaged artifact fails only the requests
that need it, with a 503 naming the file (never a 500), and every answer is computed from one
state of the workspace (:meth:`StudyData.consistent`). Under uvicorn, a connection must send a
complete request within ``request_timeout`` seconds (:class:`DeadlineH11Protocol`, against
slow-loris clients) and an idle one is closed after ``keep_alive`` seconds.

API (all GET):

==========================================  =============================================
``/api/study``                              runs, epochs, layers, classes, base, importance
``/api/base``                               2-D map of the base neurons
``/api/points/{run}/{epoch}``               2-D map of one checkpoint's neurons (and labels)
``...?format=binary`` (both above)          the same as typed arrays (:mod:`.binary`)
``/api/neuron/{run}/{epoch}/{neuron}``      one neuron: stimuli, trajectory, neighbours, concept
``/api/patches/{run}/{epoch}/{neuron}.webp`` its example patches (a WebP strip)
``/api/metrics``                            accuracy, loss (and diagnosis) per run and epoch
``/api/importance/{run}/{class}/{t}/{t2}``  top evolutions per layer and reversion results
``/api/evaluation``                         ``conceptevo evaluate``'s results (404 before)
``/api/version``                            a token that changes when the workspace does
==========================================  =============================================
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import h11
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError, WorkspaceError
from . import binary
from .data import BadRequest, StudyData, WorkspaceChanging
from .page import STATIC

log = logging.getLogger("conceptevo")
MAX_BODY = 64 * 1024  # the API only reads; any large body is refused
MAX_URL = 2048        # the longest API path is well under 200 characters
MAX_HEADERS = 16 * 1024  # request headers, all together
REQUEST_TIMEOUT = 10.0   # seconds a connection has to send a whole request (line, headers, body)
KEEP_ALIVE = 5           # seconds an idle connection stays open after a response
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # always answered (with any port)
WHOLE = re.compile(r"-?[0-9]+")  # ASCII digits: int() and FastAPI also take "١", "1_0", " 1"
PATCH_NAME = re.compile(r"(-?[0-9]+)\.webp")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; connect-src 'self'",
}


def host_name(value: str | None) -> str | None:
    """The host of a ``Host`` header (or of an ``--allow-host`` name): lower case, without its
    port; an IPv6 address without brackets, in its short form. None when malformed."""
    if value is None:
        return None
    try:
        return str(ipaddress.IPv6Address(value))  # a bare IPv6 address: ::1
    except ValueError:
        pass
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+))(?::[0-9]{1,5})?", value)
    if m is None:
        return None
    if m[1] is not None:
        try:
            return str(ipaddress.IPv6Address(m[1]))
        except ValueError:
            return None
    return m[2].lower()


class HostCheck:
    """ASGI middleware against DNS rebinding. A page of another site can make its own name
    resolve to 127.0.0.1 and then read this server as "its" origin; its requests carry that
    name in the ``Host`` header. Only these are answered: this machine's names
    (``LOCAL_HOSTS``), the address the connection reached (the address the server is bound
    to, as the socket reports it) and the names in ``allowed`` (``*.example.org`` for a
    domain and its subdomains, ``*`` for any name); any port. Other, malformed or missing
    ``Host`` headers get a 400 saying how to allow the name.

    (starlette's ``TrustedHostMiddleware`` decides from a fixed list only, so it cannot
    allow the address a connection reached on a server bound to 0.0.0.0, and its refusal
    says neither why nor what to do.)
    """

    def __init__(self, app, allowed: Iterable[str] = ()):
        self.app = app
        self.names = set(LOCAL_HOSTS)
        self.domains: list[str] = []
        self.any = False
        for name in allowed:
            self._allow(name)

    def _allow(self, name: str) -> None:
        if name == "*":
            self.any = True
        elif name.startswith("*.") and (domain := host_name(name[2:])):
            self.domains.append(domain)
        elif (host := host_name(name)) is not None:
            self.names.add(host)
        else:
            raise ConfigError(f"--allow-host {name!r} is not a host name: give a name "
                              "(dashboard.example.org, *.example.org for a domain), an IP "
                              "address, or * for any name")

    def allows(self, host: str, scope) -> bool:
        server = scope.get("server") or (None,)
        return self.any or host in self.names or host == host_name(server[0]) or \
            any(host == d or host.endswith("." + d) for d in self.domains)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = Headers(scope=scope).get("host")
            host = host_name(header)
            if host is None or not self.allows(host, scope):
                error = self.refusal(header, host)
                await JSONResponse({"error": error}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, header: str | None, host: str | None) -> str:
        if header is None:
            return ("the request has no Host header; send the name or address of this server "
                    "in it (a browser always does)")
        if host is None:
            return f"Host header {header!r} is not a host name or address"
        return (f"this dashboard does not answer requests for host {host!r}: another site "
                "could point that name at this machine and read the dashboard. If you "
                f"opened the dashboard by that name yourself, restart it with `conceptevo "
                f"serve WORKSPACE --allow-host {host}`. It answers to "
                f"{', '.join(sorted(self.names))} and the address it is bound to.")


def create_app(workspace: str | Path, allowed_hosts: Iterable[str] = ()) -> FastAPI:
    """The dashboard of ``workspace``; ``allowed_hosts``: the names it answers besides this
    machine's (see :class:`HostCheck`)."""
    data = StudyData(workspace)
    data.study()  # fail now, with a clear message, if the workspace has no space yet
    app = FastAPI(title="ConceptEvo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data
    allowed = list(allowed_hosts)
    HostCheck(None, allowed)  # a malformed name: an error now, not at the first request
    app.add_middleware(HostCheck, allowed=allowed)  # inside the guard below

    @app.middleware("http")
    async def guard(request: Request, call_next):
        target = (request.scope.get("raw_path") or request.url.path.encode()) + \
            (request.scope.get("query_string") or b"")
        if len(target) > MAX_URL:
            return JSONResponse({"error": f"request URL longer than {MAX_URL} bytes"},
                                status_code=414)
        if sum(len(k) + len(v) for k, v in request.scope.get("headers", ())) > MAX_HEADERS:
            return JSONResponse({"error": f"request headers larger than {MAX_HEADERS} bytes"},
                                status_code=431)
        length = request.headers.get("content-length")
        too_large = length is not None and (not length.isdigit() or int(length) > MAX_BODY)
        if too_large or request.method not in ("GET", "HEAD"):
            return JSONResponse({"error": "this server only answers small GET requests"},
                                status_code=413 if too_large else 405)
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        error = f"{exc.detail}: {request.url.path!r} is no page or API path of the dashboard" \
            if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": error}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(WorkspaceError)
    async def workspace_error(request: Request, exc: WorkspaceError):
        retry = {"Retry-After": str(WorkspaceChanging.RETRY_AFTER)} \
            if isinstance(exc, WorkspaceChanging) else {}
        return JSONResponse({"error": str(exc)}, status_code=503, headers=retry)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError):
        missing = isinstance(exc, FileNotFoundError)
        name = f" {exc.filename}" if exc.filename else ""
        what = "is missing" if missing else f"cannot be read ({exc.strerror or exc})"
        return JSONResponse({"error": f"workspace file{name} {what}; run `conceptevo build` "
                             "(or the command that writes it) again, or check the "
                             "workspace's permissions"}, status_code=404 if missing else 503)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # every payload from one state of the workspace (computed again if it changed meanwhile)
    @app.get("/api/study")
    def study():
        return data.consistent(data.study)

    @app.get("/api/base")
    def base(format: str = "json"):
        if payload_format(format) == "binary":
            return Response(data.consistent(data.base_binary), media_type=binary.MEDIA_TYPE)
        return data.consistent(data.base)

    @app.get("/api/points/{run}/{epoch}")
    def points(run: str, epoch: str, format: str = "json"):
        if payload_format(format) == "binary":
            body = data.consistent(data.points_binary, run, whole(epoch, "epoch"))
            return Response(body, media_type=binary.MEDIA_TYPE)
        return data.consistent(data.points, run, whole(epoch, "epoch"))

    @app.get("/api/neuron/{run}/{epoch}/{neuron}")
    def neuron(run: str, epoch: str, neuron: str):
        return data.consistent(data.neuron, run, whole(epoch, "epoch"), whole(neuron, "neuron"))

    @app.get("/api/patches/{run}/{epoch}/{name}")
    def patches(run: str, epoch: str, name: str):
        m = PATCH_NAME.fullmatch(name)
        if m is None:
            raise BadRequest(f"patch name {name!r} must be <neuron>.webp, the neuron a whole "
                             "number")
        image = data.consistent(data.patch_image, run, whole(epoch, "epoch"), int(m[1]))
        return Response(image, media_type="image/webp",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/metrics")
    def metrics():
        return data.consistent(data.metrics)

    @app.get("/api/importance/{run}/{class_index}/{t}/{t2}")
    def importance(run: str, class_index: str, t: str, t2: str):
        numbers = whole(class_index, "class"), whole(t, "epoch t"), whole(t2, "epoch t2")
        data.check_run(run)
        return data.consistent(data.importance, run, *numbers)

    @app.get("/api/evaluation")
    def evaluation():
        return data.consistent(data.evaluation)

    @app.get("/api/version")
    def version():
        return {"version": data.version()}

    return app


def payload_format(value: str) -> str:
    """``?format=``: ``json`` (the default) or ``binary`` (typed arrays, :mod:`.binary`)."""
    if value not in ("json", "binary"):
        raise BadRequest(f"format must be json or binary, not {value[:40]!r}", 422)
    return value


def whole(value: str, name: str) -> int:
    """A path parameter that must be a whole number written in decimal digits (a 422 with a
    message otherwise); its range is checked where it is used (a 404)."""
    if WHOLE.fullmatch(value) is None:
        raise BadRequest(f"{name} must be a valid integer (decimal digits), not {value!r}", 422)
    return int(value)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request: a connection must send a whole
    request (line, headers and body) within ``request_timeout`` seconds of opening, or of the
    end of its previous response; otherwise it gets a 408 (when it sent part of a request)
    and is closed. uvicorn's own ``timeout_keep_alive`` closes a connection that stays silent
    after a response, but a connection that never sends a byte, or sends one now and then
    (a slow-loris client: each byte restarts uvicorn's timer), would stay open for ever.
    The app's own time is not limited here: the deadline ends once the request is in."""

    request_timeout = REQUEST_TIMEOUT
    _deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the whole request is in (or the connection is ending)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # waiting for the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
            body = (f"the request was not complete within {self.request_timeout:g} "
                    "seconds\n").encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; "
                                 b"charset=utf-8\r\nconnection: close\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


def with_deadline(seconds: float) -> type[DeadlineH11Protocol]:
    """The protocol class for uvicorn's ``http=``, with a deadline of ``seconds``."""
    if not seconds > 0:
        raise ConfigError(f"the request timeout must be a positive number of seconds, "
                          f"not {seconds!r}")
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"request_timeout": seconds})


def serve(workspace: str | Path, host: str = "127.0.0.1", port: int = 8765,
          log_level: str = "warning", allow_hosts: Iterable[str] = (),
          request_timeout: float = REQUEST_TIMEOUT, keep_alive: int = KEEP_ALIVE) -> None:
    """Run the dashboard until interrupted.

    ``allow_hosts``: names besides this machine's and ``host`` that the dashboard answers
    (``--allow-host``); ``request_timeout``: seconds a connection has to send a whole request;
    ``keep_alive``: seconds an idle connection stays open after a response.
    """
    import uvicorn

    protocol = with_deadline(request_timeout)
    bound = [host] if host_name(host) is not None else []  # "" binds every interface
    app = create_app(workspace, allowed_hosts=[*allow_hosts, *bound])
    if host_name(host) not in LOCAL_HOSTS:
        log.warning("serving on %s: anyone who can reach this address can read the "
                    "workspace's results. The dashboard answers requests for %s and this "
                    "machine's addresses; to open it by another name (the machine's host "
                    "name), add --allow-host NAME", host, host)
    # h11 always (not httptools when installed): its limit refuses request lines and headers
    # over 16 KB before they reach the app, and DeadlineH11Protocol bounds the time to send them
    uvicorn.run(app, host=host, port=port, log_level=log_level,
                http=protocol, timeout_keep_alive=keep_alive,
                h11_max_incomplete_event_size=16 * 1024)


class ThreadedServer:
    """The dashboard of ``workspace`` served from a thread of this process, on a free port of
    127.0.0.1: ``with ThreadedServer(ws) as url: ...`` (tests, benchmarks, notebooks). The
    server stops when the block ends."""

    def __init__(self, workspace: str | Path, start_timeout: float = 30):
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(create_app(workspace), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the dashboard did not start on port {self.port}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
