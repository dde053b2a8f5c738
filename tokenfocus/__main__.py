from tokenfocus.cli import run

run()
