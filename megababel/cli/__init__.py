"""The command-line tools: one module per tool, each with `main(argv=None)`, which parses `argv` (or sys.argv) and,
called with a list, returns what it computed, for tests and scripts (on the command line it returns None: a console
script exits with what main returns, see arguments.entry_point). The console entry points of setup.cfg
(megababel-eval, megababel-export, ...) point here; tools/<name>.py run the same `main` from a checkout.
Imports any layer of megababel below it; nothing imports megababel.cli."""
