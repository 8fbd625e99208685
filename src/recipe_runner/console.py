"""The one rich console every stage prints through (tables, progress lines, the closing lines)."""

from rich.console import Console

console = Console(soft_wrap=True)  # long run paths stay on one line, copy-pasteable
if not console.is_terminal:  # logs and CI: rich assumes 80 columns and squeezes the tables to "gener…"
    console = Console(soft_wrap=True, width=160)


def clock(seconds: float) -> str:
    """Elapsed time as 4:05 or 1:02:03, for progress lines."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"
