"""mcc.attention."""
