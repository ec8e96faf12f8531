"""mcc.refine."""
