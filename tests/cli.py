"""Shared assertion for command-line failures of `data_prep.convert`."""


def assert_failed_cleanly(capsys, out, file=None, field=None) -> str:
  """After a conversion that returned 2: exactly one `error:` line on stderr
  (naming `file` and `field` when given), and neither `out` nor its temporary
  sibling left behind. Returns that line."""
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1, lines
  prefix = "error: " + (f"{file}: {field}: " if file else "")
  assert lines[0].startswith(prefix), lines[0]
  assert not out.exists()
  assert not [p for p in out.parent.iterdir()
              if p.name.startswith(f".{out.name}.")], "temporary output left"
  return lines[0]
