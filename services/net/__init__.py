"""Network pieces every role shares: the node's TLS identity and contexts (`identity`,
`tls`), the TCP client that speaks to a peer's chunk server (`client`), the interfaces
and their broadcast addresses (`netif`) and a listening socket with a one-line error
(`listen`)."""
