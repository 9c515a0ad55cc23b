"""Thin entry points (`python -m experiments.mosi`, ...) and their configs."""
