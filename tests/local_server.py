"""A stand-in HTTP service on 127.0.0.1 for the length of a `with` block (the judge, a generator)."""

import contextlib
import threading


@contextlib.contextmanager
def serving(server):
    """Yields the server's /v1 root while a thread serves it; shuts it down afterwards."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
