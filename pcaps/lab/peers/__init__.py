"""Small peers for protocols that Debian 12 has no ready client or server for."""
