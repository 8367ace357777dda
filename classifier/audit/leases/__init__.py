"""IP-assignment logs (issue 15): who held an address, or a CGNAT port block, when. The CSV layouts
(`layouts`), their store in the registry's database (`store`) and the vectorised attribution of flows
to subscribers (`attribute`)."""
