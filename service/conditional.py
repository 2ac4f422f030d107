"""ETags and the conditional headers If-Match / If-None-Match (RFC 9110 §8.8.3, §13.1).

A record's ETag is its version (a UUID) as 32 hex digits in quotes. Tags a client sends
that are not of that shape are well-formed but can never match; tags that break the
RFC's grammar are a 400.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers

from service.errors import FieldError, ServiceError, ValidationFailed

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE ; etagc = %x21 / %x23-7E / obs-text
_TAG = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*')
_OUR_TAG = re.compile(r"[0-9a-f]{32}")
_MALFORMED = 'must be "*" or a comma-separated list of quoted entity tags'


def etag(version: uuid.UUID) -> str:
    """The strong ETag of a record version."""
    return f'"{version.hex}"'


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed If-Match or If-None-Match: `*`, or a list of (opaque, weak) tags."""

    any: bool
    tags: tuple[tuple[str, bool], ...] = ()

    def versions(self, *, weak_ok: bool) -> list[uuid.UUID]:
        """The record versions these tags can match: If-Match compares strongly (weak
        tags never match), If-None-Match weakly (W/"x" matches "x")."""
        return [
            uuid.UUID(opaque)
            for opaque, weak in self.tags
            if (weak_ok or not weak) and _OUR_TAG.fullmatch(opaque)
        ]


def parse_condition(headers: Headers, name: str) -> Condition | None:
    """The header's condition, None when absent; a malformed value is a 400."""
    values = headers.getlist(name)
    if not values:
        return None
    raw = ",".join(values)
    if raw.strip(" \t") == "*":
        return Condition(any=True)
    tags: list[tuple[str, bool]] = []
    pos = 0
    while pos < len(raw):
        if raw[pos] in " \t,":  # separators; empty list elements are allowed (RFC 9110 §5.6.1)
            pos += 1
            continue
        match = _TAG.match(raw, pos)
        if match is None or (match.end() < len(raw) and raw[match.end()] != ","):
            raise ValidationFailed([FieldError(name, _MALFORMED)])
        tags.append((match.group(2), match.group(1) is not None))
        pos = match.end()
    if not tags:
        raise ValidationFailed([FieldError(name, _MALFORMED)])
    return Condition(any=False, tags=tuple(tags))


class PreconditionFailed(ServiceError):
    """If-Match / If-None-Match did not hold; carries the current ETag when there is one."""

    status = 412
    message = "Precondition failed"

    def __init__(self, current: uuid.UUID | None = None) -> None:
        super().__init__(self.message)
        self.current = current

    def headers(self) -> Mapping[str, str]:
        return {"ETag": etag(self.current)} if self.current is not None else {}
