"""vpnid's upper floor: labelling, model, registry, trials, CLI and reports. Stands on `features`."""
