"""One module per `slideaudit` command."""
