"""Constrained links: frames, secure sessions, reliability, transports."""
