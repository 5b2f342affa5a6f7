"""The `ace-bridge` command line: `main.py` builds the parser, one module per command group adds its commands."""
