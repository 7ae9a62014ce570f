"""`python -m megababel.train` and `deepspeed --module megababel.train`: the launcher, megababel/train/cli.py."""
from megababel.train.cli import entry_point

entry_point()
