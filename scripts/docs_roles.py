"""A griffe extension for the docs' API pages: the docstrings' Sphinx roles (``:class:`~lightning_cnn.X```) become
cross-references mkdocstrings resolves, so the pages read ``X`` as a link (or as code where ``X`` has no section on
the page) instead of the role's raw text.

``mkdocs.yml`` loads it by path (``extensions: [scripts/docs_roles.py]``); the docstrings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _link(match: re.Match[str]) -> str:
    target = match["target"]
    explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)  # Sphinx's `title <target>`
    if explicit:
        shown, target = explicit["title"], explicit["target"]
    else:
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    if "." not in target:  # a name without its module: shown as code, not linked
        return f"`{shown}`"
    # Optional: a link where the target has a page section, plain code where it has none (an internal module).
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring to Markdown cross-references."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_link, obj.docstring.value)
