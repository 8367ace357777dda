"""The registry of sanctioned tunnels: the store (`store`), registrations (`model`), CSV files (`csvio`),
the cross-check of tunnel flows (`match`) and the `vpnid registry` command (`cli`)."""

# The environment variable naming the registry database when --db does not. Here, not in `store`: a command
# that only checks it (classify without a registry) then loads no SQLite code.
ENV = "VPNID_DB"
