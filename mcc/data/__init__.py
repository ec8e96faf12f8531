"""mcc.data."""
