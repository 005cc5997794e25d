"""An SFTP client that gives its channel back to the connection's gate when closed (connection.Connection.sftp)."""

from __future__ import annotations

from typing import Callable

import paramiko


class _SFTPClient(paramiko.SFTPClient):
    """Gives its channel back to the gate when closed."""

    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            done, self.on_close = self.on_close, None
            if done is not None:
                done()
