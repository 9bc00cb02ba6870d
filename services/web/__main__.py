from p2pshare.services.web.role import main

main()
