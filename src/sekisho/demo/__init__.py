"""The embedded demo: internal apps and users for `make run`. Never used outside demo mode."""
