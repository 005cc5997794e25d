"""One step on one worker: carried out (execute.py), its output streamed and masked (output.py), the
executor's wire format (protocol.py), what its end means (outcome.py), its artifacts, and its result."""
