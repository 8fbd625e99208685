"""The one rich console every stage prints through (tables, progress lines, the closing lines)."""

from rich.console import Console

console = Console(soft_wrap=True)  # long run paths stay on one line, copy-pasteable
if not console.is_terminal:  # logs and CI: rich assumes 80 columns and squeezes the tables to "gener…"
    console = Console(soft_wrap=True, width=160)
