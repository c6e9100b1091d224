from workerguard.cli import main

main()
