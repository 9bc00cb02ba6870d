from p2pshare.services.listener.role import main

main()
