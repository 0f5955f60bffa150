"""One quick reachability probe before a download, so that an offline machine fails in seconds.

Without a network, huggingface_hub retries each file for about a minute and urllib waits on a
dead connection; a single short request to the host says whether downloading can work at all.
urllib honours HTTPS_PROXY / NO_PROXY like the downloaders do.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from functools import lru_cache
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0


def unreachable(url: str) -> str | None:
    """Why the host of `url` cannot be reached (one short phrase), or None when it answers at all."""
    parts = urlsplit(url)
    return _probe(f"{parts.scheme}://{parts.netloc}/")


@lru_cache(maxsize=None)
def _probe(root: str) -> str | None:
    try:
        urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered: the host is up, whatever the status of its front page
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{root.rstrip('/')} is unreachable: {reason}"
    return None


def clipped(text: str, limit: int = 200) -> str:
    """The first line of `text`, at most `limit` characters, cut at a word boundary (never mid-word)."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
