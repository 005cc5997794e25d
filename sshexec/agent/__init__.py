"""The resident agent: a per-user process that keeps sshexec's imports warm, and the thin client that hands it a command.

    wire.py     where the agent lives (socket, lock, log), which sshexec it is, and the framing both sides speak
    client.py   the console script's side: hand `run|check|logs|runs` to the agent, or say "run it here"
    server.py   the agent: accept, check the caller's uid, fork a child per command
    child.py    a forked child taking on the client's command: its stdin/stdout/stderr, cwd, environment, signals

Everything here imports only the standard library: the client's path must stay
small (docs/architecture.md, "The agent"). The agent never imports the program
either: the console script (sshexec/_entry.py) hands it what to preload and what
to run, so this package sits on the ground floor of the layers.
"""
