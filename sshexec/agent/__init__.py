"""The resident agent: a per-user process that keeps sshexec's imports warm, and the thin client that hands it a command.

    wire.py     where the agent lives (socket, lock, log), which sshexec it is, and the framing both sides speak
    client.py   the console script's side: hand `run|check|logs|runs` to the agent, or say "run it here"
    server.py   the agent: accept, check the caller's uid, hand the command to an idle child or fork one
    children.py the agent's children as it sees them (busy, resetting, idle), and its status
    child.py    a forked child taking on the client's command: its stdin/stdout/stderr, cwd, environment,
                signals; reset after it for the next one
    scrub.py    a finished command's secrets overwritten wherever they are left in the child's memory

Everything here imports only the standard library: the client's path must stay
small (docs/architecture.md, "The agent"). The agent never imports the program
either: the console script (sshexec/_entry.py) hands it what to preload and what
to run, so this package sits on the ground floor of the layers.
"""
