from racer_online.cli import main

main()
