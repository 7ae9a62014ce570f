"""The training run: the Trainer (the one loop), its run config, run record, resume checks, vocabulary data,
signals, callbacks and loggers, and the command line (`python -m megababel.train`)."""
