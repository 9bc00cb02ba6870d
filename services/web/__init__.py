"""p2p-web: the node's dashboard and, when asked, a read-only browser share of its own files.

Like the four roles it talks to them only through the database. `role.py` is the
process (socket, uvicorn thread, rate sampler); `app.py` the Starlette app; `guard.py`
the Host, token and CSRF checks; `share.py` and `ranges.py` the browser share;
`dashboard.py`, `chart.py` and `sampler.py` the dashboard. Nothing here imports the web
stack at package import, so `p2pctl share-link` can use `token.py` cheaply.
"""
