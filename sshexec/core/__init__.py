"""The ground floor: statuses and exit codes, secrets and masking, retry, fan-out, the local machine.

Nothing here talks to a worker, reads a file the operator wrote, or imports
another sshexec package but `sshexec.errors`.
"""
