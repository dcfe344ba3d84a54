"""GET /dashboard: one static page that draws /v1/metrics* in the browser.

The page holds no data, so it needs no key; its script asks for the admin key when a metrics
call answers 401/403 and sends it as `Authorization: Bearer`. Everything it loads comes from
this module's static/ folder (no CDN, no third-party script), which the Content-Security-Policy
enforces: a page showing cached prompts must not run or fetch anything from elsewhere.
"""

from __future__ import annotations

import functools
from importlib import resources

from litestar import Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

# default-src 'self' covers scripts, styles, images and fetch(); the rest are not covered by
# it: no <base> rewriting, no form posting the key anywhere, no framing (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on each load, so a page from an older release never talks to a newer API.
    "Cache-Control": "no-cache",
}
# The files /dashboard/<name> serves, and their types; nothing else under static/ is reachable.
ASSETS = {
    "dashboard.js": "text/javascript",
    "api.js": "text/javascript",
    "sections.js": "text/javascript",
    "charts.js": "text/javascript",
    "format.js": "text/javascript",
    "dashboard.css": "text/css",
    "icon.svg": "image/svg+xml",
}


@functools.cache
def _static(name: str) -> bytes:
    """A file of static/, read once per process."""
    return (resources.files(__name__) / "static" / name).read_bytes()


@get("/dashboard", include_in_schema=False, cache=False)
async def dashboard() -> Response[bytes]:
    """The dashboard page (static HTML; its script fetches the numbers)."""
    return Response(_static("index.html"), media_type="text/html", headers=HEADERS)


@get("/dashboard/{asset:str}", include_in_schema=False, cache=False)
async def dashboard_asset(asset: FromPath[str]) -> Response[bytes]:
    """The page's script, stylesheet and icon."""
    media_type = ASSETS.get(asset)
    if media_type is None:
        raise NotFoundException(f"no dashboard file {asset!r}")
    return Response(_static(asset), media_type=media_type, headers=HEADERS)


DASHBOARD_ROUTES = [dashboard, dashboard_asset]
