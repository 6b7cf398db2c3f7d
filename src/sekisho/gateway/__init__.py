"""The gateway (PEP): the identity-aware reverse proxy. Entry point: `server.Gateway`."""
