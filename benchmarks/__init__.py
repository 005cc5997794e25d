"""sshexec's benchmark suite: sshexec against OpenSSH + docker and Ansible, on a lab of its own.

Run it with `python -m benchmarks` (see BENCHMARKS.md). Not part of the
installed package.
"""
