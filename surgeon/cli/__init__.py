"""The `surgeon` command line: the lazy group in main.py, one module per command group."""
