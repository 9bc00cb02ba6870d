"""The downloader role (p2p-downloader): takes queued downloads from the database and
fetches each from every peer that holds it, chunk by chunk, verified and resumable.

Start reading at `role` (the loop over queued downloads), then `engine` (a download: a
set of files, the picker over their chunks), its two policies `job` (one big file) and
`small_batch` (many small ones), `worker` (one connection to one peer, through the
narrow `JobPort` of `port`), `picker` (which chunk next), `writer` (bytes into the temp
file), `progress` and `finish` (durable bookkeeping and publishing); `pool` keeps a
batch's connections for the next one.
"""
