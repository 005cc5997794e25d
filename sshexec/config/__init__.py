"""What the operator wrote: the inventory, the runbook, and the YAML loader that maps every problem to file, line and field.

Pure: nothing here contacts a worker. Loading validates everything at once and
raises one InputError (exit 2) listing every problem found.
"""
