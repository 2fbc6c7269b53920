"""What text from outside may be: names that become folders, and free text that is stored.

Labels, splits and drop names become folder names under the project, so they
are refused when they could name anything else: a path separator, a leading
dot (``..``, hidden files), a control character. Groups and other caller text
are only stored and shown, so they may hold a little more (``/ : @``), but
still nothing that breaks a table, a log line or a page.
"""

from __future__ import annotations

import re

# A folder name: starts with a letter or digit; letters, digits, space and . _ + - ( ) , after.
NAME = re.compile(r"\w[\w .+\-(),]{0,63}")
NAME_RULE = "1-64 letters, digits, spaces and . _ + - ( ) , starting with a letter or digit"
# Caller text (groups, tags): letters, digits, space and . _ : / @ + -.
TEXT = re.compile(r"[\w .:/@+\-]{1,64}")
TEXT_RULE = "at most 64 letters, digits, spaces and . _ : / @ + -"
SPLITS = ("train", "val", "test")


def shown(value: str) -> str:
    """``value`` cut for an error message."""
    return repr(value if len(value) <= 40 else value[:40] + "...")


def name_problem(field: str, value: str) -> str | None:
    """Why ``value`` may not be used as a folder name (None when it may)."""
    if NAME.fullmatch(value) and not value.endswith((" ", ".")):
        return None
    return f"{field} {shown(value)} is not a usable name: use {NAME_RULE}"


def text_problem(field: str, value: str) -> str | None:
    """Why ``value`` may not be stored as caller text (None when it may)."""
    if TEXT.fullmatch(value):
        return None
    return f"{field} {shown(value)} ({len(value)} characters) is not accepted: use {TEXT_RULE}"


def split_problem(value: str) -> str | None:
    if value in SPLITS:
        return None
    return f"split {shown(value)} is not one of {', '.join(SPLITS)}"
