"""AWS access: the session factory (the only place clients are made), targets and fan-out."""
