"""TODO: mmsa format (being written)."""


def add_arguments(group):
  del group


def read(args):
  raise NotImplementedError
