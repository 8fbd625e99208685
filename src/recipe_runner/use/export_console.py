"""What the export stage prints: its progress lines and file sizes.

export.py and gguf_export.py both print through here, so neither imports the other for it
(export.py loads gguf_export.py only when GGUF files are asked for).
"""

from __future__ import annotations

from recipe_runner.console import console


def say(message: str) -> None:
    console.print(f"export         {message}", markup=False)


def mb(n_bytes: int) -> str:
    """A file size people read: 12.3 MB, 5.3 kB."""
    return f"{n_bytes / 2**20:,.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} kB"
