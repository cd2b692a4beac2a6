"""The sans-I/O core: packages, request/response bookkeeping, handshake, backoff."""
