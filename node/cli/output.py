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


class ProgressLine:
    """One self-overwriting progress line on stderr, only on a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False

    def __call__(self, p: dict) -> None:
        if not self.enabled:
            return
        done, total = p.get("bytes"), p.get("total")
        text = p.get("stage", "working")
        if done is not None:
            text += f" {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB ({100 * done / total:.0f} %)" if total else "")
        for k in ("blocks", "peers", "connected"):
            if k in p:
                text += f", {k} {p[k]}"
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
