"""URLs as chute prints them: credentials never reach a log line, a status page or a terminal."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "token", "secret", "key"})
_HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` with the password of its user part, and secret query values, as ``***``.

    ``redis://:s3cret@host:6379/0`` becomes ``redis://:***@host:6379/0``; the
    user name, host, path and other query parameters stay, so the line still
    says which service and database is meant. Anything that is not a URL is
    returned as it is.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    name, colon, _ = user.partition(":")
    if at and colon:  # a bare user part is a user name (as redis-py reads it)
        netloc = f"{name}:{_HIDDEN}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            hidden = [(k, _HIDDEN if k.lower() in _SECRET_PARAMS else v) for k, v in pairs]
            query = urlencode(hidden, safe="*:")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
