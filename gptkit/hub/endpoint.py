"""The Hugging Face endpoint: which one is in effect, and pointing the whole process at it.

Order: --endpoint URL, then --mirror (https://hf-mirror.com), then $HF_ENDPOINT, then
https://huggingface.co. gptkit passes the result to huggingface_hub explicitly wherever it can,
because huggingface_hub reads HF_ENDPOINT only once, when it is first imported; `configure_endpoint`
also patches what huggingface_hub and datasets already read, for the calls that take no endpoint
(datasets streaming, HfFileSystem). This module is the only one that touches those globals.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse, urlsplit, urlunsplit

from gptkit.errors import GptkitError

DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR_ENDPOINT = "https://hf-mirror.com"

# huggingface_hub.constants that configure_endpoint sets. Not every supported version has all of
# them: HF_URL_HOSTS and HF_HUB_DISABLE_XET are missing from the 0.2x releases (0.26 has no
# HF_URL_HOSTS), so each is read with getattr and a missing one is left missing on restore.
_HUB_CONSTANTS = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_URL_HOSTS", "HF_HUB_DISABLE_XET")
_ENV = ("HF_ENDPOINT", "HF_HUB_DISABLE_XET")
_MISSING = object()


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
    return check_endpoint_url(url, source), source


def check_endpoint_url(url: str, source: str = "--endpoint") -> str:
    """`url` if it is an http(s) URL with a host, else a one-line error naming where it came from.

    A bare host (hf-mirror.com) is refused, not completed: http or https is the user's choice
    (a local mirror is usually plain http), and guessing wrong would fail later, less clearly.
    """
    where = f"{source} {url!r}" if source != "default" else repr(url)
    try:
        parsed = urlsplit(url)
        host = parsed.hostname
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:  # "http://[::1": an unclosed IPv6 bracket, a bad port
        raise GptkitError(f"invalid Hugging Face endpoint {where}: {e}") from None
    if "://" not in url:
        raise GptkitError(
            f"invalid Hugging Face endpoint {where}: no scheme; did you mean https://{url} (or http:// for a local mirror)?"
        )
    if parsed.scheme not in ("http", "https"):
        raise GptkitError(f"invalid Hugging Face endpoint {where}: {parsed.scheme}:// is not supported; use http(s)://")
    if not host:
        raise GptkitError(f"invalid Hugging Face endpoint {where}: no host; expected a URL such as {MIRROR_ENDPOINT}")
    return url


def is_official(endpoint: str) -> bool:
    host = urlparse(endpoint).hostname or ""
    return host == "huggingface.co" or host.endswith(".huggingface.co")


def redact_url(url: str) -> str:
    """An endpoint URL without user:password@, fit to print or store."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def configure_endpoint(endpoint: str) -> bool:
    """Point huggingface_hub and datasets in this process (and child processes) at `endpoint`.

    Both libraries read HF_ENDPOINT once, at import; this sets the variable and patches the values
    they already read, whichever was imported first. Off huggingface.co, Xet is switched off: Xet
    clients fetch from Hugging Face's own storage and would bypass the mirror. Returns True if Xet
    was switched off.
    """
    import huggingface_hub.constants as hc

    os.environ["HF_ENDPOINT"] = endpoint
    hc.ENDPOINT = endpoint
    hc.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    host = urlsplit(endpoint).hostname
    hosts = getattr(hc, "HF_URL_HOSTS", None)
    if host and hosts is not None:  # the hosts huggingface_hub sends the token to; absent before 0.27
        hc.HF_URL_HOSTS = frozenset(hosts | {host.lower()})
    xet_off = not is_official(endpoint)
    if xet_off:
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        hc.HF_HUB_DISABLE_XET = True  # read at call time by huggingface_hub (is_xet_available); harmless before Xet
    ds_config: Any = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_config.HF_ENDPOINT = endpoint
        ds_config.HUB_DATASETS_URL = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    _clear_filesystem_cache()
    return xet_off


@contextlib.contextmanager
def preserved_endpoint_state() -> Iterator[None]:
    """Undo, on exit, what configure_endpoint changes process-wide: the environment, huggingface_hub's
    constants and datasets' (tests use this so one test's mirror never leaks into the next)."""
    import huggingface_hub.constants as hc

    env = {k: os.environ.get(k) for k in _ENV}
    saved: dict[str, Any] = {k: getattr(hc, k, _MISSING) for k in _HUB_CONSTANTS}
    ds_config: Any = sys.modules.get("datasets.config")
    ds_saved = (ds_config.HF_ENDPOINT, ds_config.HUB_DATASETS_URL) if ds_config is not None else None
    try:
        yield
    finally:
        _restore_env(env)
        for k, value in saved.items():
            if value is _MISSING:
                if hasattr(hc, k):
                    delattr(hc, k)
            else:
                setattr(hc, k, value)
        ds_config = sys.modules.get("datasets.config")
        if ds_config is not None:
            if ds_saved is not None:
                ds_config.HF_ENDPOINT, ds_config.HUB_DATASETS_URL = ds_saved
            else:  # imported inside the block: it read our endpoint from the environment
                ds_config.HF_ENDPOINT = saved["ENDPOINT"]
                ds_config.HUB_DATASETS_URL = saved["ENDPOINT"] + "/datasets/{repo_id}/resolve/{revision}/{path}"
        _clear_filesystem_cache()


def _restore_env(saved: dict[str, str | None]) -> None:
    """Put environment variables back as `saved` read them (None: it was not set)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def use_endpoint(endpoint: str) -> Iterator[str]:
    """configure_endpoint for the duration of a `with` block, then restore the previous state."""
    with preserved_endpoint_state():
        configure_endpoint(endpoint)
        yield endpoint


def _clear_filesystem_cache() -> None:
    hffs = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs is not None:
        hffs.HfFileSystem.clear_instance_cache()  # cached instances keep the endpoint they were made with


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """huggingface_hub and datasets offline for a `with` block (their caches only, no request), as
    HF_HUB_OFFLINE=1 makes them at import; both read it at import, so the values they already read
    are patched too, and everything is restored on exit. For an endpoint known to be unreachable:
    each request would otherwise be retried with back-off before the cache is used (a minute for
    one lm-eval task)."""
    import huggingface_hub.constants as hc

    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    env = {k: os.environ.get(k) for k in keys}
    saved_hub = hc.HF_HUB_OFFLINE
    ds_config: Any = sys.modules.get("datasets.config")
    ds_saved = getattr(ds_config, "HF_HUB_OFFLINE", None) if ds_config is not None else None
    os.environ.update({k: "1" for k in keys})
    hc.HF_HUB_OFFLINE = True
    if ds_config is not None:
        ds_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        _restore_env(env)
        hc.HF_HUB_OFFLINE = saved_hub
        ds_config = sys.modules.get("datasets.config")
        if ds_config is not None:
            ds_config.HF_HUB_OFFLINE = ds_saved if ds_saved is not None else saved_hub
