"""Content hashing: the resumable SHA-256 chain that manifests are made of (`chain`), and
hashing a whole shared file in one pass while proving it did not change meanwhile (`files`).

Both the server (indexing the share) and the downloader (verifying each chunk) use it.
"""
