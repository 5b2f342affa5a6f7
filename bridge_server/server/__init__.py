"""The network front door: the aiohttp app, sessions and handshake, security checks, TLS, shared memory, the
control panel as a sub-app, tokens and the daemon lock."""
