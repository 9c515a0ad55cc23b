"""`get_config(arg)` files; `arg` "tiny" gives a seconds-long CPU variant for tests."""
