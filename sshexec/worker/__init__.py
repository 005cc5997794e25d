"""The worker's side: the sh that sshexec runs on a worker, and the Python that reads its replies.

Every remote command is a constant `Scriptlet` (scriptlet.py) whose values
travel as positional parameters. `WorkerSession` (session.py) is one worker
during one run: its connection, what is known about it, and the verbs a step
uses (go, stage, pull, stop, clean, sweep). Docker verbs and what their
failures mean (docker.py, docker_errors.py, pull.py), the bundle (bundle.py),
and what several operators share on a worker (coord.py: locks, heartbeats,
max_steps slots; locks.py, heartbeat.py, slots.py, held.py) live here too.
"""
