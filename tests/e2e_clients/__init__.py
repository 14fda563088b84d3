"""Real Matrix clients with end-to-end encryption against a subprocess homeserver (a package: one server for the folder)."""
