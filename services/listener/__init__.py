"""The listener role (p2p-listener): hears peers' UDP announcements, fetches each new
catalog version once (`catalog_fetch`) and records peers and their offers through one
writer thread (`writer`).

Start reading at `role`.
"""
