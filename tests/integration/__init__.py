"""Integration tests: a real salt-master and salt-minions (a package, so its fixtures stop with it)."""
