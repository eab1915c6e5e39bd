"""The split network the lab runs: its descriptor, the built-in networks, a user's own."""
