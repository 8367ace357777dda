"""Real-traffic lab: real VPN daemons in network namespaces, captured underlay, labelled pcaps."""
