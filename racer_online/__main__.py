from racer_online.apps.cli import main

main()
