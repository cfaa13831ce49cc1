"""Terminal output that stored user text cannot drive.

Run names, tags, recipe names, paths and error messages come from users and files; printed raw, an
escape sequence in a tag (ESC]0;...BEL retitles the terminal, ESC[2J clears it) would act on the
reader's terminal. Every console the CLI prints through is a :class:`SafeConsole`: control
characters in any string it renders are shown as ``\\xNN`` instead of obeyed. Rich's own styling is
added after this step, so colours still work.
"""
from __future__ import annotations

import json as _json
import re
from typing import Any

from rich.console import Console
from rich.text import Text

# C0 controls except tab and newline, DEL, and the C1 controls (0x9b is a one-byte CSI)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: object) -> str:
    """``text`` with every control character but tab and newline written out as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


class SafeConsole(Console):
    """A rich Console whose strings (markup and plain, table cells included) pass through :func:`plain`."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(plain(text), **kwargs)

    def print_json(self, json: str | None = None, *, data: Any = None, **kwargs: Any) -> None:
        # rich renders JSON without render_str and writes its strings unescaped (ensure_ascii=False):
        # where any string holds a control character, have every non-ASCII character escaped instead
        text = json if json is not None else _json.dumps(data, default=str)
        if _CONTROL.search(_json.dumps(_json.loads(text), ensure_ascii=False)):
            kwargs["ensure_ascii"] = True
        super().print_json(text, **kwargs)
