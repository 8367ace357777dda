"""Labelling: dissector verdicts and the trained model turn flows into labels; training and scoring."""
