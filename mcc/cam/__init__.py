"""mcc.cam."""
