"""A local OpenAI-compatible chat endpoint standing in for the LLM judge (an external service)."""

import contextlib
import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from local_server import serving


@contextlib.contextmanager
def judge_endpoint(redirect_to: str | None = None, redirect_code: int = 302,
                   answer: Callable[[str], str | int] | None = None):
    """Yields (base_url, seen): every request of any method as (path, Authorization header, JSON body or None).
    Replies "8" to a reply containing "yo", else "score: 2/10"; with `answer`, replies what it returns for
    the request's (first) message: a text, or an int to answer with that HTTP status and no body (500);
    with `redirect_to`, answers every POST with a redirect to that URL instead."""
    seen: list = []

    class Grader(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw) if raw else None
            seen.append((self.path, self.headers["Authorization"], body))
            if redirect_to:
                self.send_response(redirect_code)
                self.send_header("Location", redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            content = body["messages"][0]["content"]
            reply = answer(content) if answer else "8" if "yo" in content else "score: 2/10"
            if isinstance(reply, int):
                self.send_response(reply)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):  # anything else that arrives (a W&B client, say) is recorded too
            seen.append((self.path, self.headers["Authorization"], None))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_DELETE = do_HEAD = do_GET

        def log_message(self, *args):
            pass

    with serving(HTTPServer(("127.0.0.1", 0), Grader)) as url:
        yield url, seen
