"""What the running parts share: the State object and the metrics registry."""
