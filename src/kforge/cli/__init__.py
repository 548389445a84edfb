"""The `kforge` command line: one small module per subcommand, each a thin layer over library
functions. Every command takes `--json` (machine output on stdout); human tables go to stdout and
progress to stderr. The runtime never imports this package."""
