"""The ``wordcount`` example AI: a Python entry point, standard library only.

The runtime calls ``run(input)`` once per request with the request body and
sends back what it returns.  Input: UTF-8 text.  Output: JSON
``{"lines": n, "words": n, "chars": n, "top": [[word, count], ...]}`` with the
ten most frequent words (case-folded; ties in alphabetical order).
"""

from __future__ import annotations

import json
import re
from collections import Counter

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
TOP = 10


def run(input: bytes) -> bytes:
    """Count lines, words and characters of ``input`` and list the top words."""
    text = input.decode("utf-8", errors="replace")
    words = [w.casefold() for w in _WORD.findall(text)]
    counts = Counter(words)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    result = {
        "lines": len(text.splitlines()),
        "words": len(words),
        "chars": len(text),
        "top": [[w, n] for w, n in top],
    }
    return json.dumps(result, ensure_ascii=False).encode("utf-8")
