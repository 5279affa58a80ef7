"""The wallet monitor: the poll loop that turns transfers into credit."""
