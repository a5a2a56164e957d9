"""The gunicorn worker class of a replica: uvicorn's worker with a TLS floor, which exits when its engine process dies.

uvicorn builds its SSL context from gunicorn's cert/key but leaves the protocol floor to OpenSSL's defaults; a
data-centre endpoint must refuse TLS 1.0/1.1 whatever the host's OpenSSL policy says, so the floor is set here.
"""

from __future__ import annotations

import os
import signal
import ssl

from uvicorn_worker import UvicornWorker

MINIMUM_TLS = ssl.TLSVersion.TLSv1_2


class ServingWorker(UvicornWorker):
    async def _serve(self) -> None:
        # A replica whose engine process died exits (uvicorn turns SIGTERM into a graceful shutdown) and gunicorn
        # starts a fresh replica with a fresh engine.
        self.wsgi.state.exit_replica = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self.config.app = self.wsgi
        self.config.load()  # builds config.ssl; Server.serve() does not load a second time
        if self.config.ssl is not None:
            self.config.ssl.minimum_version = MINIMUM_TLS
        await super()._serve()
