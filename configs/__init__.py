"""The recipes: one `get_config(variant)` per file, each building on its
siblings (`from configs import base`); every field is documented in base.py.
Passed to a command by path: `--config=configs/restart.py[:variant]`."""
