"""The `vpnid` command line: a layer on top. One module per command, shared options and messages in
`common`, output writers in `output`. Library code never imports this package."""
