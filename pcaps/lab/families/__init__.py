"""One module per tunnel family (plus the non-VPN negatives); each exports VARIANTS."""
