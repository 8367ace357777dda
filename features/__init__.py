"""vpnid's lower floor: capture files -> packets -> bidirectional flows -> dissector evidence -> feature vectors.

Nothing in this package imports `classifier`.
"""
