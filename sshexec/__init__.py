"""sshexec: run deployment steps in Docker execution containers on agentless SSH workers."""

__version__ = "0.1.0"
