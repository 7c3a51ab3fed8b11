from vcomp.cli import run

run()
