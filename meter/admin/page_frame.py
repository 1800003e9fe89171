"""The admin pages' shared frame: one head (styles, script, nav banner) around each page's content.

A file in ``pages/`` holds its ``<title>`` line, then its own content; served whole by ``page_html``.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web


def page_asset(name: str) -> bytes:
    return (resources.files("meter.admin") / "pages" / name).read_bytes()


# Every page's head and frame; a file in pages/ holds its <title> line, then its own content.
PAGE_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
{title}<link rel="icon" href="data:,">
<link rel="stylesheet" href="/pages/meter.css">
<script src="/pages/meter.js"></script>
</head>
<body>
<main>
<div id="banner" class="banner" hidden></div>
"""
PAGE_FOOT = "</body>\n</html>\n"


def page_html(name: str) -> bytes:
    """The page ``name`` (a file in pages/) in the shared frame."""
    title, _, content = page_asset(name).decode().partition("\n")
    return (PAGE_HEAD.format(title=title + "\n") + content + PAGE_FOOT).encode()


def page_response(name: str) -> web.Response:
    return web.Response(body=page_html(name), content_type="text/html", charset="utf-8")


