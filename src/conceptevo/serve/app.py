"""``conceptevo serve``: the dashboard, a local web app over one workspace.

A FastAPI app with a JSON API (below) and one page written for this project (``static/``:
HTML, CSS and JavaScript, no third-party file, nothing fetched from the network). It binds
127.0.0.1 unless told otherwise, sets no CORS header (other sites cannot read it), validates
every parameter (bad ones get a 4xx with a message) and builds every file path it reads from
validated run names and integers, so no request reaches a file outside the workspace.

API (all GET):

==========================================  =============================================
``/api/study``                              runs, epochs, layers, classes, base, importance
``/api/base``                               2-D map of the base neurons
``/api/points/{run}/{epoch}``               2-D map of one checkpoint's neurons (and labels)
``/api/neuron/{run}/{epoch}/{neuron}``      one neuron: stimuli, trajectory, neighbours, concept
``/api/patches/{run}/{epoch}/{neuron}.webp`` its example patches (a WebP strip)
``/api/metrics``                            accuracy, loss (and diagnosis) per run and epoch
``/api/importance/{run}/{class}/{t}/{t2}``  top evolutions per layer and reversion results
``/api/evaluation``                         ``conceptevo evaluate``'s results (404 before)
``/api/version``                            a token that changes when the workspace does
==========================================  =============================================
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .data import BadRequest, StudyData

log = logging.getLogger("conceptevo")
STATIC = Path(str(resources.files("conceptevo") / "serve" / "static"))
MAX_BODY = 64 * 1024  # the API only reads; any large body is refused
MAX_URL = 2048        # the longest API path is well under 200 characters
MAX_HEADERS = 16 * 1024  # request headers, all together
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; connect-src 'self'",
}


def create_app(workspace: str | Path) -> FastAPI:
    data = StudyData(workspace)
    data.study()  # fail now, with a clear message, if the workspace has no space yet
    app = FastAPI(title="ConceptEvo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.data = data

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

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/study")
    def study():
        return data.study()

    @app.get("/api/base")
    def base():
        return data.base()

    @app.get("/api/points/{run}/{epoch}")
    def points(run: str, epoch: int):
        return data.points(run, epoch)

    @app.get("/api/neuron/{run}/{epoch}/{neuron}")
    def neuron(run: str, epoch: int, neuron: int):
        return data.neuron(run, epoch, neuron)

    @app.get("/api/patches/{run}/{epoch}/{name}")
    def patches(run: str, epoch: int, name: str):
        stem = name[:-5] if name.endswith(".webp") else ""
        if not stem.lstrip("-").isdigit():
            raise BadRequest(f"patch name {name!r} must be <neuron>.webp")
        image = data.patch_image(run, epoch, int(stem))
        return Response(image, media_type="image/webp",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/metrics")
    def metrics():
        return data.metrics()

    @app.get("/api/importance/{run}/{class_index}/{t}/{t2}")
    def importance(run: str, class_index: int, t: int, t2: int):
        data.check_run(run)
        return data.importance(run, class_index, t, t2)

    @app.get("/api/evaluation")
    def evaluation():
        return data.evaluation()

    @app.get("/api/version")
    def version():
        return {"version": data.version()}

    return app


def serve(workspace: str | Path, host: str = "127.0.0.1", port: int = 8765,
          log_level: str = "warning") -> None:
    """Run the dashboard until interrupted."""
    import uvicorn

    app = create_app(workspace)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can read the "
                    "workspace's results", host)
    # h11 always (not httptools when installed): its limit refuses request lines and headers
    # over 16 KB before they reach the app
    uvicorn.run(app, host=host, port=port, log_level=log_level, http="h11",
                h11_max_incomplete_event_size=16 * 1024)
