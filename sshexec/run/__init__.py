"""A run across pools: the runner, the sessions it holds, each step dispatched to its workers with its
attempts, the release policy, the run's locks and heartbeat, the dry run, the result, and --retry-failed."""
