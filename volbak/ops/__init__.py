"""The operations: backup, restore, verify, migrate, prune, and what runs them
unattended (locks, --stop, hooks, notifications)."""
