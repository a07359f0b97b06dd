"""The gateway: the public API (OTUS social-network spec), bearer tokens, and balancing
across the dialogs instances."""
