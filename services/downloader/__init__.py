"""The downloader role (p2p-downloader): takes queued downloads from the database and
fetches each from every peer that holds it, chunk by chunk, verified and resumable.

Start reading at `role` (the loop over queued downloads), then `job` (one file's
download), `worker` (one connection to one peer, through the narrow `JobPort`),
`picker` (which chunk next), `writer` (bytes into the temp file), `progress` and
`finish` (durable bookkeeping and publishing). `small_batch` takes many small files
in one request; `pool` keeps connections for it.
"""
