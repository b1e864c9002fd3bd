"""The casreg command-line interface (typer); it only renders what casreg returns."""
