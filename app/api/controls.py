"""Per-request cache controls from headers: Cache-Control, X-Sentinel-TTL, -Threshold, -Namespace.

They apply to /v1/query and /v1/chat/completions alike (/v1/query also takes them as body
fields, which win). A malformed value is a 400 naming the header, never silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from app.api.schemas import ONE_YEAR
from app.errors import BadRequest

NAMESPACE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def from_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """The `Ask` fields the request's headers set (nothing for headers it does not send)."""
    controls: dict[str, Any] = {}
    directives = {
        part.strip().lower().split("=", 1)[0]
        for part in headers.get("cache-control", "").split(",")
        if part.strip()
    }
    # Unknown directives (max-age, private...) are ignored, as HTTP caches do.
    if "no-cache" in directives:
        controls["read_cache"] = False
    if "no-store" in directives:
        controls["write_cache"] = False
    if (ttl := headers.get("x-sentinel-ttl")) is not None:
        controls["ttl"] = parse_ttl(ttl, "X-Sentinel-TTL")
    if (threshold := headers.get("x-sentinel-threshold")) is not None:
        controls["similarity_threshold"] = parse_threshold(threshold, "X-Sentinel-Threshold")
    if (namespace := headers.get("x-sentinel-namespace")) is not None:
        controls["namespace"] = parse_namespace(namespace, "X-Sentinel-Namespace")
    if (budget := headers.get("x-sentinel-max-wrong-hit-rate")) is not None:
        controls["max_wrong_hit_rate"] = parse_threshold(budget, "X-Sentinel-Max-Wrong-Hit-Rate")
    return controls


def parse_ttl(value: str, name: str) -> int:
    """Seconds, 1 to one year."""
    try:
        ttl = int(value.strip())
    except ValueError:
        raise BadRequest(f"{name} must be a whole number of seconds", param=name) from None
    if not 0 < ttl <= ONE_YEAR:
        raise BadRequest(f"{name} must be between 1 and {ONE_YEAR} seconds", param=name)
    return ttl


def parse_threshold(value: str, name: str) -> float:
    """A cosine floor (or a rate) in [0, 1]."""
    try:
        threshold = float(value.strip())
    except ValueError:
        raise BadRequest(f"{name} must be a number between 0 and 1", param=name) from None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise BadRequest(f"{name} must be a number between 0 and 1", param=name)
    return threshold


def parse_namespace(value: str, name: str) -> str:
    """1-64 characters of letters, digits and . _ : -"""
    if not NAMESPACE.match(value):
        raise BadRequest(
            f"{name} must be 1-64 characters of letters, digits and . _ : -", param=name
        )
    return value
