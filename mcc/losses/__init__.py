"""mcc.losses."""
