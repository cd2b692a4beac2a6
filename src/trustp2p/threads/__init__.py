"""Threads: plugin classes, their loader and the built-in heartbeat."""
