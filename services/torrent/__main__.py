from p2pshare.services.torrent.role import main

main()
