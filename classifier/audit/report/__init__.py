"""The trial report: HTML, CSV, JSON and pcap files written from a stored trial."""
