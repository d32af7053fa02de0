"""One module per verb: the application logic behind the CLI."""
