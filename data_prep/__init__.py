"""Feature files researchers already have -> prepared TFRecord directories."""
