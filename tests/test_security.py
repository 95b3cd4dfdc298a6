"""Security defaults: no code runs from a checkpoint, a config or a workspace unless asked
for; the dashboard listens on this machine only, validates every parameter, serves nothing
outside its directories, sets no CORS header and refuses large requests."""

from __future__ import annotations

import os
import pickle
import socket
import time
import warnings

import pytest
import torch
from conftest import TinyVGG, randomise, write_study
from study_factory import running, served_workspace

from conceptevo.cli import build_parser, main
from conceptevo.config import load_config
from conceptevo.errors import ConfigError, LayerSelectionError
from conceptevo.models.registry import build_model
from conceptevo.serve import app as serve_app
from conceptevo.serve.data import BadRequest, StudyData

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SECRET = "SECRET-TOKEN-outside-the-workspace"


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *map(str, argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


class _Shell:
    """Unpickling this runs a shell command: safe loading must never do it."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ----------------------------------------------------------------------------- checkpoints
def test_a_malicious_checkpoint_is_refused_by_every_command(tmp_path, image_folder, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(randomise(TinyVGG(), 0).state_dict(), ckpt / "epoch_0.pt")
    pwned = tmp_path / "pwned"
    with open(ckpt / "epoch_1.pt", "wb") as f:
        pickle.dump({"state_dict": _Shell(f"touch {pwned}")}, f, protocol=2)
    config = write_study(tmp_path, image_folder, (ckpt / "epoch_{epoch}.pt").as_posix())
    for argv in (["stimuli", "--config", config],
                 ["layers", "--arch", "conftest:build_tiny_vgg", "--checkpoint",
                  ckpt / "epoch_1.pt", "--input-size", 16]):
        code, err = run_cli(capsys, *argv)
        assert code == 2
        assert f"checkpoint {ckpt / 'epoch_1.pt'} contains Python objects" in err
        assert "--trust-checkpoints" in err and "trust_checkpoints = true" in err
        assert not pwned.exists()
    # a whole pickled model (a common, harmless case) is refused the same way, and loads
    # when the user says they trust it
    torch.save(randomise(TinyVGG(), 3), ckpt / "epoch_1.pt")
    code, err = run_cli(capsys, "layers", "--arch", "conftest:build_tiny_vgg",
                        "--checkpoint", ckpt / "epoch_1.pt", "--input-size", 16)
    assert code == 2 and "--trust-checkpoints" in err
    assert main(["-q", "layers", "--arch", "conftest:build_tiny_vgg", "--checkpoint",
                 str(ckpt / "epoch_1.pt"), "--input-size", "16", "--trust-checkpoints"]) == 0


# --------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("arch,error", [
    ("__import__('os').system('touch {pwned}')", "must look like"),
    ("os:system('touch {pwned}')", "'os' has no callable \"system('touch"),
    ("__import__('os').system('touch {pwned}'):f", "cannot import"),
    ("conftest:no_such_factory", "'conftest' has no callable 'no_such_factory'"),
    ("conftest:", "'conftest' has no callable ''"),
    ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
    ("os:getcwd", "os:getcwd returned str, not a torch.nn.Module"),
])
def test_a_config_never_evaluates_code(tmp_path, image_folder, vgg_checkpoints, capsys, arch,
                                       error):
    pwned = tmp_path / "pwned"
    arch = arch.format(pwned=pwned)
    path = write_study(tmp_path, image_folder, vgg_checkpoints.as_posix(),
                       arch=arch.replace("\\", "\\\\").replace('"', '\\"'))
    code, err = run_cli(capsys, "stimuli", "--config", path)
    assert code == 2 and error in err, err
    assert not pwned.exists()


def test_strings_in_kwargs_and_layers_stay_strings(tmp_path, image_folder, vgg_checkpoints,
                                                    capsys):
    pwned = tmp_path / "pwned"
    code = f"__import__('os').system('touch {pwned}')"
    with pytest.raises(ConfigError, match="cannot build conftest:build_tiny_vgg with arguments"):
        build_model("conftest:build_tiny_vgg", {"num_classes": code})
    path = write_study(tmp_path, image_folder, vgg_checkpoints.as_posix())
    path.write_text(path.read_text().replace("[model]\n", f'[model]\nlayers = "{code}"\n'))
    assert load_config(path).model.layers == code
    exit_code, err = run_cli(capsys, "stimuli", "--config", path)
    assert exit_code == 2 and "__import__" in err
    with pytest.raises(LayerSelectionError):
        from conceptevo.models.adapter import ModelAdapter

        ModelAdapter(TinyVGG(), code)
    assert not pwned.exists()


# ------------------------------------------------------------------- workspaces are data
def test_serving_a_workspace_never_imports_the_code_it_names(tmp_path, capsys):
    pwned = tmp_path / "pwned"
    ws = served_workspace(tmp_path / "ws", store_fields=False)
    ws.save_study({"runs": [{"name": "a", "checkpoints": "ckpt"}],
                   "model": {"arch": "subprocess:call",
                             "kwargs": {"args": ["touch", str(pwned)]}}})
    client = TestClient(serve_app.create_app(ws.root))
    assert client.get("/api/neuron/a/0/3").status_code == 200  # the data is served
    r = client.get("/api/patches/a/0/3.webp")
    assert r.status_code == 404
    assert "would import and run the code" in r.json()["error"]
    assert "conceptevo build" in r.json()["error"]
    code, err = run_cli(capsys, "report", ws.root, "-o", tmp_path / "report.html")
    assert code == 2 and "would import and run the code" in err
    assert not pwned.exists()


def test_patches_of_a_built_workspace_are_served(tmp_path):
    ws = served_workspace(tmp_path / "ws", arch="conftest:build_tiny_vgg", store_fields=True)
    client = TestClient(serve_app.create_app(ws.root))
    r = client.get("/api/patches/a/1/5.webp")
    assert r.status_code == 200 and r.content[8:12] == b"WEBP"


# --------------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    ws = served_workspace(root / "ws")
    (root / "secret.txt").write_text(SECRET)
    (ws.root / "secret.txt").write_text(SECRET)
    return ws, TestClient(serve_app.create_app(ws.root))


def _leaks(text: str) -> bool:
    return any(s in text for s in (SECRET, "schema_version", "def create_app", "[probe]",
                                   "root:x:0:0"))


@pytest.mark.parametrize("url", [
    "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/%2e%2e%2fapp.py",
    "/static/%252e%252e%252fapp.py", "/static/..%5capp.py", "/static/....//app.py",
    "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt", "/static//etc/passwd",
    "/static/%2fetc%2fpasswd", "/static/index.html%00.png", "/static/..%c0%afapp.py",
    "/secret.txt", "/conceptevo.json", "/%2e%2e/secret.txt", "/ws/secret.txt",
    "/api/patches/a/0/..%2f..%2f..%2fsecret.txt", "/api/patches/a/0/%2e%2e%2f3.webp",
    "/api/patches/..%2F..%2Fsecret.txt/0/3.webp", "/api/patches/a/0/3.webp%00.txt",
    "/api/points/..%2F..%2F/0", "/api/points/a/0%2f..%2f..%2fsecret.txt",
    "/api/neuron/a/0/1%00", "/api/points/%2e%2e/0", "/api/importance/..%2f..%2f/0/0/1",
])
def test_traversal_attempts_get_4xx_and_no_file(served, url):
    _, client = served
    r = client.get(url)
    assert 400 <= r.status_code < 500, (url, r.status_code)
    assert not _leaks(r.text)


@pytest.mark.parametrize("url,status,words", [
    ("/api/points/a/99999999999999999999999999", 404, "no epoch"),
    ("/api/points/a/1.5", 422, "valid integer"),
    ("/api/points/a/0x1", 422, "valid integer"),
    ("/api/neuron/a/0/1e3", 422, "valid integer"),
    ("/api/neuron/a/0/%20", 422, "valid integer"),
    ("/api/neuron/a/0/99999999999999999999", 404, "out of range"),
    ("/api/points/%E2%80%AEa/0", 404, "unknown run"),
    ("/api/patches/a/0/-1.webp", 404, "out of range"),
    ("/api/patches/a/0/3.WEBP", 400, "must be <neuron>.webp"),
    ("/api/importance/a/-1/0/1", 404, "out of range"),
    ("/api/importance/nope/0/0/1", 404, "unknown run"),
])
def test_every_parameter_is_validated(served, url, status, words):
    _, client = served
    r = client.get(url)
    assert r.status_code == status, (url, r.text)
    assert words in r.text


def test_no_cors_and_only_small_get_requests(served):
    _, client = served
    for method in ("GET", "OPTIONS", "POST", "PUT", "DELETE"):
        r = client.request(method, "/api/study", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
        assert not any(k.lower().startswith("access-control-") for k in r.headers), method
        assert r.status_code == (200 if method == "GET" else 405), method
    assert client.get("/api/study?" + "x" * 3000).status_code == 414
    assert client.get("/api/points/a/" + "0" * 3000).status_code == 414
    assert client.get("/api/study", headers={"X-Big": "y" * 20_000}).status_code == 431
    assert client.request("GET", "/api/study", content=b"x" * 70_000).status_code == 413
    assert client.request("GET", "/api/study",
                          headers={"Content-Length": "-1"}).status_code == 413


def test_the_dashboard_listens_on_this_machine_only(served, monkeypatch, capsys):
    ws, _ = served
    assert build_parser().parse_args(["serve", "ws"]).host == "127.0.0.1"
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append(kwargs))
    assert main(["serve", str(ws.root)]) == 0
    assert calls[0]["host"] == "127.0.0.1"
    assert issubclass(calls[0]["http"], serve_app.DeadlineH11Protocol)  # h11, with a deadline
    assert calls[0]["h11_max_incomplete_event_size"] <= 64 * 1024
    assert main(["serve", str(ws.root), "--host", "0.0.0.0"]) == 0
    assert calls[1]["host"] == "0.0.0.0"
    capsys.readouterr()


def _raw(port: int, request: bytes, trickle: bool = False) -> bytes:
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            if trickle:
                for start in range(0, len(request), 4096):
                    s.sendall(request[start:start + 4096])
                    time.sleep(0.001)
            else:
                s.sendall(request)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server closed the connection: a refusal
    return b"".join(chunks)


def test_the_real_server_refuses_huge_requests_and_traversal(served, monkeypatch):
    """The uvicorn server as ``conceptevo serve`` configures it, on a free local port."""
    ws, _ = served
    with running(ws.root) as (port, _):
        ok = _raw(port, b"GET /api/study HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200") and b"access-control" not in ok.lower()
        close = b"Host: 127.0.0.1\r\nConnection: close\r\n"
        long_line = b"GET /api/study?" + b"x" * 40_000 + b" HTTP/1.1\r\n" + close + b"\r\n"
        long_header = (b"GET /api/study HTTP/1.1\r\n" + close + b"X-Big: " + b"y" * 40_000
                       + b"\r\n\r\n")
        many_headers = (b"GET /api/study HTTP/1.1\r\n" + close
                        + b"".join(b"X-%d: %s\r\n" % (i, b"z" * 90) for i in range(400))
                        + b"\r\n")
        for request in (long_line, long_header, many_headers):
            for chunked in (False, True):  # at once, or trickled in (h11's own limit)
                reply = _raw(port, request, chunked)
                assert reply == b"" or reply.split(b" ", 2)[1] in (b"400", b"414", b"431"), \
                    reply[:200]
        for path in (b"/static/../../conceptevo.json", b"/static/../app.py",
                     b"/../secret.txt", b"/static/%2e%2e/%2e%2e/secret.txt",
                     b"../secret.txt", b"/static/..\\app.py"):
            reply = _raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Connection: close\r\n\r\n")
            status = reply.split(b" ", 2)[1] if reply else b"000"
            assert status.startswith(b"4"), (path, reply[:200])
            assert not _leaks(reply.decode("latin-1"))


def test_study_data_builds_paths_from_validated_values_only(served):
    ws, _ = served
    data = StudyData(ws.root)
    for run in ("../a", "a/../a", "", ".", "a\x00", "/etc"):
        with pytest.raises(BadRequest, match="unknown run"):
            data.points(run, 0)
        with pytest.raises(BadRequest, match="unknown run"):
            data.patch_image(run, 0, 0)
