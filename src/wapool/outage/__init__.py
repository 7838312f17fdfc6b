"""Restarting during a PostgreSQL outage: what the state directory keeps to resume alone (the
registry as last seen, the leases held), when it may be used, and the return of PostgreSQL."""
