"""The Hugging Face endpoint in effect, resolved the same way by every command.

Order: --endpoint URL, then --mirror (https://hf-mirror.com), then $HF_ENDPOINT, then
https://huggingface.co. The result is always passed to huggingface_hub explicitly, because
huggingface_hub reads HF_ENDPOINT only once, when it is first imported.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from gptkit.errors import GptkitError

DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_ENDPOINT = "https://hf-mirror.com"


def resolve_endpoint(endpoint: str | None = None, mirror: bool = False) -> str:
    return resolve_endpoint_and_source(endpoint, mirror)[0]


def resolve_endpoint_and_source(endpoint: str | None = None, mirror: bool = False) -> tuple[str, str]:
    """(URL, where it came from: "--endpoint", "--mirror", "HF_ENDPOINT" or "default")."""
    if endpoint and mirror:
        raise GptkitError("give either --endpoint or --mirror, not both")
    candidates = (
        ("--endpoint", endpoint),
        ("--mirror", MIRROR_ENDPOINT if mirror else None),
        ("HF_ENDPOINT", os.environ.get("HF_ENDPOINT")),
        ("default", DEFAULT_ENDPOINT),
    )
    source, url = next((source, url.strip().rstrip("/")) for source, url in candidates if url)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise GptkitError(f"invalid Hugging Face endpoint {url!r}; expected a URL such as {MIRROR_ENDPOINT}")
    return url, source


def is_official(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or ""
    return host == "huggingface.co" or host.endswith(".huggingface.co")
