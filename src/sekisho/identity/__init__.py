"""Who is asking: local accounts, passwords, sessions, sign-in pages and throttling."""
