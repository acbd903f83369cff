from demsr.cli import run

run()
