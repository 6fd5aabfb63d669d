"""CLI output: JSON for scripts, rich tables for people (rich imported lazily:
it costs tens of milliseconds that `--json` callers should not pay)."""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _console():
    import shutil

    from rich.console import Console

    # Off a terminal rich assumes 80 columns and wraps peer ids; logs and
    # pipes are better served by full lines.
    return Console() if sys.stdout.isatty() else Console(width=max(160, shutil.get_terminal_size().columns))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    _console().print(t)


def kv(title: str, pairs: Sequence[tuple[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in pairs:
        t.add_row(k, "" if v is None else str(v))
    _console().print(t)


def err(msg: str) -> None:
    sys.stderr.write(f"ofnode: {msg}\n")


def say(msg: str) -> None:
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()
