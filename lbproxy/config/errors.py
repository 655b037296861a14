"""
The one kind of configuration error: one line naming the file, the section,
the key and what is wrong.
"""

from __future__ import annotations

import difflib
from typing import List, Optional


class ConfigError(Exception):
    """
    A configuration that cannot be used.

    C{str()} of it is the one line shown to the user.
    """

    def __init__(
        self,
        message: str,
        path: str = "",
        section: Optional[str] = None,
        key: Optional[str] = None,
    ) -> None:
        self.message = message
        self.path = path
        self.section = section
        self.key = key
        super().__init__(self.line())

    def line(self) -> str:
        where = []
        if self.path:
            where.append(f"{self.path}:")
        if self.section is not None:
            where.append(f"[{self.section}]")
        if self.key is not None:
            where.append(f"{self.key}:")
        return " ".join(where + [self.message])

    def located(self, path: str) -> ConfigError:
        """
        The same error, naming C{path} as the file it came from.
        """
        return ConfigError(self.message, path, self.section, self.key)


def unknown(what: str, word: str, known: List[str]) -> str:
    """
    The message for an unknown key or option C{word} (C{what} names it):
    the closest known one if a typo is likely, and the known ones.
    """
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown {what} ({hint}known: {', '.join(known)})"
