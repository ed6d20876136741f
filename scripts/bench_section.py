"""A marked section of BENCHMARKS.md that one benchmark script owns (the cluster run, the cold
storm): written in place between its markers, or appended when the file has none yet; the rest of
the file is left as it is."""


def write_section(md, begin, end, text):
    """Puts `text` (which starts with `begin` and ends with `end`) into the file `md`."""
    try:
        with open(md) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if begin in old and end in old:
        new = old[:old.index(begin)] + text.rstrip("\n") + old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + text
    with open(md, "w") as f:
        f.write(new)
