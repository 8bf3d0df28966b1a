"""The one boundary where network failures (requests, urllib3, sockets) become amq's errors.

Every call a request depends on goes through it: Amazon Q (amq/upstream.py) and the token
service's refreshes (amq/credentials/oidc.py refresh_grant), as requests' HTTPAdapter.send
turns urllib3's errors into its own. The interactive login (`OidcClient.call`, run by the
`login` command) is not a request's: it reports an unreachable service as a LoginError.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import requests
import urllib3

from .errors import BadGateway, GatewayTimeout

logger = logging.getLogger(__name__)

# What the HTTP stack raises when the network fails: requests' own, urllib3's when iter_content
# or read1 surface them, and the socket's.
TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


@contextmanager
def transport_errors(url: str, *, mid_answer: bool = False, service: str = "Amazon Q") -> Iterator[None]:
    """502 when `service` cannot be reached or the connection breaks, 504 when it is too slow.

    `mid_answer`: the service had begun to answer, so nothing may be retried.
    """
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        kind = type(exc).__name__
        # The cause, for the operator (a missing CA bundle and a refused connection look alike
        # to the client); URLs and socket errors carry no credentials.
        logger.warning("transport error talking to %s%s: %s: %.200s", service,
                       " mid-answer" if mid_answer else "", kind, exc)
        if mid_answer:
            if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)) \
                    or "timed out" in str(exc).lower():
                raise GatewayTimeout(f"{service} stopped sending before the answer was complete "
                                     "(read timeout)") from None
            raise BadGateway(f"the connection to {service} broke mid-answer ({kind})") from None
        if isinstance(exc, requests.ConnectTimeout):
            raise BadGateway(f"cannot reach {service} at {url} (connect timeout)") from None
        if isinstance(exc, requests.Timeout):
            raise GatewayTimeout(f"{service} did not answer in time") from None
        raise BadGateway(f"cannot reach {service} at {url} ({kind})") from None
