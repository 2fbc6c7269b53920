"""HTML for reviewers from Jinja2 templates (``monitoring/templates/``), escaped once.

Sections hand the templates plain values; autoescape escapes every one of
them, after any shortening, so a long reason is never cut in the middle of
an HTML entity and a hostile group name stays text.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).with_name("templates")


@cache
def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,  # a missing value is a bug, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def relative_link(target: str | Path | None, page_folder: Path, text: str | None = None):
    """``{href, text}`` for a template: href relative to the page, None when missing."""
    if not target:
        return None
    path = Path(target)
    href = os.path.relpath(path.resolve(), page_folder.resolve()) if path.exists() else None
    return {"href": href, "text": text or path.name}


def shorten(text: str, limit: int = 160) -> str:
    """The start of a long text (escaped later, whole entities only)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def when(stamp: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC, as recorded)."""
    return str(stamp or "")[:19].replace("T", " ")
