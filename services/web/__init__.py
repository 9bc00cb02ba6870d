"""p2p-web: the node's dashboard and, when asked, a read-only browser share of its own files.

Like the four roles it talks to them only through the database. `role.py` is the
process (socket, uvicorn thread, rate sampler); `app.py` the routes; `context.py` what
every handler shares (state, templates, error answers); `guard.py` the Host, token and
CSRF checks and the middleware applying them; `share.py` (listing, file response) and
`ranges.py` the browser share;
`dashboard.py`, `chart.py` and `sampler.py` the dashboard. Nothing here imports the web
stack at package import, so `p2pctl share-link` can use `token.py` cheaply.
"""
