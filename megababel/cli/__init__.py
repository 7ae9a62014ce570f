"""The command-line tools: one module per tool, each with `main(argv=None)` (it parses `argv`, or sys.argv, and
returns what it computed, so tests and scripts can call it). The console entry points of setup.cfg
(megababel-eval, megababel-export, ...) point here, and tools/<name>.py runs the same `main` from a checkout.
Imports any layer of megababel below it; nothing imports megababel.cli."""
