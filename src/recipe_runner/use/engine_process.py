"""An inference engine's own server process (llama-server, vLLM): started, health-checked, stopped.

The stage owns it: it listens on a free loopback port nobody else is told about, its output goes to
<run>/engine.log, and it is stopped (SIGTERM, then SIGKILL after 10 s) when the stage ends, however
it ends. A process that exits while starting, or is not healthy within its start timeout, is a
RecipeError quoting the last lines of its log: never a hang.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from recipe_runner.errors import RecipeError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty)"


class EngineProcess:
    def __init__(self, name: str, argv: list[str], port: int, log: Path, health_path: str,
                 start_timeout_s: float, env: dict | None = None):
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log, "ab")  # noqa: SIM115 - open for the process's whole life
        try:
            self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                         start_new_session=True)  # Ctrl-C reaches us, we stop it
        except OSError as exc:
            self.log_file.close()
            raise RecipeError(f"{name}: cannot start {argv[0]}: {exc.strerror}") from None
        # a new loopback connection per request (~0.1 ms): a kept-alive one that the engine closes as a request
        # goes out fails it ("Server disconnected without sending a response": 8 of 120 requests in the benchmark)
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(None, connect=10),
                                 limits=httpx.Limits(max_keepalive_connections=0))
        try:
            self.wait_healthy(health_path, start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, health_path: str, timeout_s: float) -> None:
        began = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RecipeError(f"{self.name} exited with code {code} while starting; the end of {self.log}:\n"
                                  f"{tail(self.log)}")
            try:
                if httpx.get(self.url + health_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - began > timeout_s:
                raise RecipeError(f"{self.name} did not become healthy within {timeout_s:.0f} s "
                                  f"(GET {health_path} on port {self.port}); the end of {self.log}:\n{tail(self.log)}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self) -> str:
        """Why a request to the engine failed, when the engine itself is gone."""
        code = self.proc.poll()
        return "" if code is None else f" ({self.name} exited with code {code}; see {self.log})"

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.log_file.close()

    def events(self, path: str, body: dict):
        """POST body to the engine and yield its server-sent events as dicts; a refusal, an error event or a
        dropped connection is a RuntimeError naming the engine (and its exit, if it died)."""
        try:
            with self.http.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise RuntimeError(f"{self.name} answered {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError(f"{self.name}: {event['error']}")
                    yield event
        except httpx.HTTPError as exc:
            raise RuntimeError(f"{self.name}: {type(exc).__name__}: {exc}{self.failure()}") from None
