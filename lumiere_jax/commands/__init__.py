"""One module per `lumiere` subcommand: HELP, add_arguments(parser), run(args)."""
