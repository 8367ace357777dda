"""Protocol dissectors, one small module per protocol; `registry.ALL` lists the ones the flow table runs."""
