from demsr.cli import main

main()
