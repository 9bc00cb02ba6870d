from p2pshare.services.downloader.role import main

main()
