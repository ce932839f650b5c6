"""The browser pages: the customer's proof check (``/``, ``/verify``) and the
live dashboard (``/dashboard``), served from the verifier package's ``web/``
directory (docs/PROTOCOL.md §11.6).

The pages verify in the browser what this daemon sends, with the verifier
key pinned in the page's URL fragment, so serving them asks for no trust in
this server beyond what the CLI asks. What is served is fixed at start: the
files of ``verifier/web`` read once, by name, with no path from the network
reaching the file system. Every answer carries a Content-Security-Policy
that allows scripts, styles and connections from this origin only, and no
inline script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["CONTENT_SECURITY_POLICY", "PAGES", "SECURITY_HEADERS", "StaticFile", "WebFiles"]

# a page route -> the file it serves
PAGES = {"/": "verify.html", "/verify": "verify.html", "/dashboard": "dashboard.html"}
ASSET_PREFIX = "/web/"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-cache"),
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str

    def headers(self, policy: str = CONTENT_SECURITY_POLICY) -> list[tuple[str, str]]:
        """The answer's headers: its type and length, then ``SECURITY_HEADERS``
        with ``policy`` as the Content-Security-Policy (a site hosting the
        pages elsewhere sets its own)."""
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            *((n, policy if n == "Content-Security-Policy" else v) for n, v in SECURITY_HEADERS),
        ]


class WebFiles:
    """The page files, read once from ``verifier/web`` (and its ``vendor/``)."""

    def __init__(self) -> None:
        self._files: dict[str, StaticFile] = {}
        root = resources.files("verifier") / "web"
        for folder, prefix in ((root, ""), (root / "vendor", "vendor/")):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                suffix = "." + entry.name.rpartition(".")[2]
                if entry.is_file() and _NAME.fullmatch(entry.name) and suffix in _TYPES:
                    self._files[prefix + entry.name] = StaticFile(
                        entry.read_bytes(), _TYPES[suffix]
                    )

    def lookup(self, path: str) -> StaticFile | None:
        """The file a request path names: a page route, or ``/web/NAME``
        (``/web/vendor/NAME``); None for anything else."""
        if path in PAGES:
            return self._files.get(PAGES[path])
        if path.startswith(ASSET_PREFIX):
            return self._files.get(path[len(ASSET_PREFIX) :])
        return None
