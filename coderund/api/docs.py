"""The OpenAPI document, Swagger UI and the playground, served from package data: no CDN."""
from __future__ import annotations

import functools
from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from . import openapi

STATIC_PREFIX = "/docs/static"
PLAYGROUND = Path(__file__).with_name("static")  # the playground page, its script and the vendored editor
PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>coderund API</title>
  <link rel="stylesheet" href="{STATIC_PREFIX}/swagger-ui.css">
  <link rel="icon" href="{STATIC_PREFIX}/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{STATIC_PREFIX}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true,
      presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout",
    }});
  </script>
</body>
</html>
"""


@functools.cache
def _document() -> dict:
    return openapi.document()


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(_document())


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def playground_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PLAYGROUND / "index.html")


def add_static(app: web.Application) -> None:
    app.router.add_static(STATIC_PREFIX, swagger_ui_path)
    app.router.add_static("/static", PLAYGROUND)
