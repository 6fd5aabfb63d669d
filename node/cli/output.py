"""CLI output: JSON for scripts, rich tables for people (rich imported lazily:
it costs tens of milliseconds that `--json` callers should not pay)."""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    Console().print(t)


def kv(title: str, pairs: Sequence[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k, v in pairs:
        t.add_row(k, "" if v is None else str(v))
    Console().print(t)


def err(msg: str) -> None:
    sys.stderr.write(f"ofnode: {msg}\n")


def say(msg: str) -> None:
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()
