"""The operations dashboard: server-rendered pages (Jinja2, autoescaped), a little plain
JavaScript, no external assets.

- `session`: the signed session cookie (HMAC-SHA256 with `settings.session_secret`) and the
  session-bound CSRF token; `session_principal` lets `/api/v1` accept the cookie as well as a
  bearer token, so the pages' JavaScript (fetch, EventSource) calls the same API as every client.
- `i18n`: every UI string, one catalogue per language (zh-CN default, en).
- `pages`: the routes and `mount(app)`.

This package's `__init__` imports nothing: `fleet.server.api.deps` imports `web.session`, and
`web.pages` imports the API's routes.
"""
