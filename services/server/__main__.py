from p2pshare.services.server.role import main

main()
