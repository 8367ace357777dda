"""The lab (real VPN software in network namespaces) and the project's own labelled captures."""
