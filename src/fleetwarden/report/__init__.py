"""The HTML report: a self-contained single page rendered from a RunReport with jinja2."""

from __future__ import annotations

from .html import render_html

__all__ = ["render_html"]
