"""The registry of sanctioned tunnels: the store (`store`), registrations (`model`), CSV files (`csvio`),
the cross-check of tunnel flows (`match`) and the `vpnid registry` command (`cli`)."""
