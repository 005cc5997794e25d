"""What sshexec keeps on the operator's side: the run history with each run's log and artifacts,
following a log as it grows, and the server's API tokens."""
