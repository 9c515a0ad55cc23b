"""One module per input format; each has `add_arguments(parser)` and `read(args) -> writer.Table`."""

from data_prep.formats import gcnet, mmsa, npz, poria

FORMATS = {m.__name__.rsplit(".", 1)[-1]: m for m in (gcnet, mmsa, npz, poria)}
