"""The server role (p2p-server): indexes the share folder and serves catalogs, manifests
and chunks over TCP.

Start reading at `role` (the process), then `chunkserver` (one session per connection:
`frames` reads its requests, `sources` finds their bytes, `sender` sends them) and
`indexer`/`scan` (the share folder into the database).
"""
