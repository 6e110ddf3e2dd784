"""The dashboard: served by the API at /, its static files under /static, no build step, no CDN."""

from __future__ import annotations

import re

import httpx

from api.app import STATIC_DIR
from core.metrics import BY_NAME

JS_TYPES = ("text/javascript", "application/javascript")
IMPORT_RE = re.compile(r"""^import\s.*?\sfrom\s+"([^"]+)";""", re.MULTILINE)


def _media_type(response: httpx.Response) -> str:
    return response.headers["content-type"].split(";")[0].strip()


async def test_index_is_html_referencing_script_and_stylesheet(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert _media_type(r) == "text/html"
    html = r.text
    assert "Lishui 澧水" in html
    assert '<script type="module" src="/static/app.js"></script>' in html
    assert '<link rel="stylesheet" href="/static/style.css">' in html
    assert 'id="banner"' in html  # where API errors show
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]


async def test_static_files_are_served_with_their_types(client: httpx.AsyncClient) -> None:
    css = await client.get("/static/style.css")
    assert css.status_code == 200 and _media_type(css) == "text/css"
    # The entry module and every module it imports, transitively: none missing, all served as JS.
    seen: set[str] = set()
    pending = ["app.js"]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        r = await client.get(f"/static/{name}")
        assert r.status_code == 200, name
        assert _media_type(r) in JS_TYPES, (name, r.headers["content-type"])
        for spec in IMPORT_RE.findall(r.text):
            assert spec.startswith("./"), f"{name} imports {spec!r}: only local modules, no CDN"
            pending.append(spec.removeprefix("./"))
    assert seen == {p.name for p in STATIC_DIR.glob("*.js")}
    assert (await client.get("/static/no-such-file.js")).status_code == 404


async def test_dashboard_uses_only_local_resources_and_real_endpoints(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        remote = re.search(r"""(?:src|href)=["'](?:https?:)?//|url\(\s*["']?(?:https?:)?//""", text)
        assert remote is None, f"{path.name} loads a remote resource: {remote}"
    app_js = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    called = set(re.findall(r'"(/api/v1/[a-z/]+)"', app_js))
    assert called and called <= set(paths), called - set(paths)
    assert "/api/v1/devices/{key}/latest" in paths and "/api/v1/devices/{key}/series" in paths
    # The table's and the chart's metrics are catalogue names.
    key_metrics = re.search(r"KEY_METRICS = \[([^\]]*)\]", app_js)
    chart_metric = re.search(r'SERIES = \{ metric: "([a-z0-9_]+)"', app_js)
    assert key_metrics is not None and chart_metric is not None
    for name in [*re.findall(r'"([a-z0-9_]+)"', key_metrics[1]), chart_metric[1]]:
        assert name in BY_NAME, name
