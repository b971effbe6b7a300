"""Errors from huggingface_hub calls, turned into one line that says what to do.

`explain` is the one translation, used by `gptkit download` and by tokenize's streaming of Hub
datasets. `user_errors()` lists the exception types a network, an endpoint or a user's input can
raise through huggingface_hub; callers catch exactly those, so a bug keeps its traceback.

huggingface_hub talks HTTP through requests (before 1.0), httpx (1.x) or httpx2 (later): the
transport exceptions are taken from whichever of those modules is imported, since only an imported
one can have raised.
"""

from __future__ import annotations

import json
import sys

from gptkit.errors import GptkitError
from gptkit.hub.endpoint import is_official, redact_url

RETRY_STATUS = (408, 429, 500, 502, 503, 504)

ExcTypes = tuple[type[BaseException], ...]


def _transport() -> tuple[ExcTypes, ExcTypes, ExcTypes]:
    """(connect, timeout, any transport) exception types of the HTTP libraries in use."""
    connect: list[type[BaseException]] = []
    timeout: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        mod = sys.modules.get(name)
        if mod is not None:
            connect.append(mod.ConnectError)
            timeout.append(mod.TimeoutException)
            transport.append(mod.TransportError)
    requests = sys.modules.get("requests")
    if requests is not None:
        connect.append(requests.ConnectionError)
        timeout.append(requests.Timeout)
        transport.append(requests.RequestException)
    return tuple(connect), tuple(timeout), tuple(transport)


def user_errors() -> ExcTypes:
    """Exception types that a network, an endpoint or the user's input cause, not a bug of ours."""
    from huggingface_hub import errors as hf

    return (
        hf.HfHubHTTPError,
        hf.HFValidationError,
        *_transport()[2],
        json.JSONDecodeError,  # an endpoint that is not a Hub
        OSError,  # disk full, permissions, huggingface_hub's size check, OfflineModeIsEnabled
    )


def is_connect_error(e: BaseException) -> bool:
    return isinstance(e, _transport()[0])


def reason(e: BaseException) -> str:
    """The last line of an error's message, short."""
    text = str(e).strip().splitlines()
    msg = text[-1] if text else type(e).__name__
    return msg[:120]


def transient(e: BaseException) -> str | None:
    """A short reason if `e` is worth retrying (timeouts, dropped connections, 5xx, 429), else None."""
    from huggingface_hub.errors import HfHubHTTPError

    _, timeout, transport = _transport()
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        return f"HTTP {status}" if status in RETRY_STATUS else None
    if isinstance(e, timeout):
        return "timed out"
    if isinstance(e, transport):
        return f"connection error ({type(e).__name__})"
    if isinstance(e, OSError) and "Consistency check failed" in str(e):  # huggingface_hub: body cut short
        return "incomplete transfer"
    return None


def explain(e: BaseException, repo: str, endpoint: str, revision: str | None = None, after: str = "") -> GptkitError:
    """The one-line message for an error of a huggingface_hub call about `repo` ("dataset ORG/NAME").

    `after` ends the messages of errors that a re-run can get past (e.g. "; re-run to resume").
    """
    from huggingface_hub import errors as hf

    where = redact_url(endpoint)
    connect, timeout, transport = _transport()
    entry_missing = getattr(hf, "RemoteEntryNotFoundError", hf.EntryNotFoundError)  # renamed in 1.0
    if isinstance(e, hf.GatedRepoError):  # a RepositoryNotFoundError too: test it first
        return GptkitError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN")
    if isinstance(e, hf.RevisionNotFoundError):
        return GptkitError(f"{repo} has no revision {revision!r} at {where}")
    if isinstance(e, hf.RepositoryNotFoundError):
        return GptkitError(
            f"repository {repo} not found at {where} (check the name and repo type; private repos need HF_TOKEN)"
        )
    if isinstance(e, hf.DisabledRepoError):
        return GptkitError(f"{repo} is disabled on {where}")
    if isinstance(e, entry_missing):
        return GptkitError(f"a file listed by {where} for {repo} is missing there{after}")
    if isinstance(e, hf.HFValidationError):
        return GptkitError(f"invalid repo id or revision for {repo!r}: {str(e).splitlines()[0]}")
    if isinstance(e, hf.OfflineModeIsEnabled):
        return GptkitError(f"{repo} is not available offline (HF_HUB_OFFLINE is set); download it first")
    if isinstance(e, hf.HfHubHTTPError) and e.response is not None:
        code = e.response.status_code
        if code in (401, 403):
            return GptkitError(f"{where} refused access to {repo} (HTTP {code}); set HF_TOKEN to a token with access")
        return GptkitError(f"{where} answered HTTP {code} for {repo}{after}")
    if isinstance(e, connect):
        fix = (
            "behind a firewall? try --mirror"
            if is_official(endpoint)
            else "check --endpoint / HF_ENDPOINT and the network"
        )
        return GptkitError(f"{where} cannot be reached ({reason(e)}); {fix}{after}")
    if isinstance(e, timeout):
        return GptkitError(f"{where} timed out{after}")
    if isinstance(e, transport):
        return GptkitError(f"connection to {where} failed ({reason(e)}){after}")
    if isinstance(e, json.JSONDecodeError):
        return GptkitError(f"{where} does not answer like a Hugging Face Hub endpoint; check --endpoint / HF_ENDPOINT")
    if isinstance(e, OSError):
        name = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return GptkitError(f"{e.strerror or e}{name}{after}")
    first = str(e).splitlines()[0] if str(e) else ""
    return GptkitError(f"{type(e).__name__}: {first}{after}")
