"""`sam-edge bench`: latency of every inference stage, on the user's own machine.

    host.py      what machine measured (CPU model and features, cores, threads)
    subjects.py  what is timed: a bundle, the torch model, the official package
    runner.py    the timing of every stage of a subject
    memory.py    the resident set around a run
    schema.py    the results JSON: its documented layout, version and validator
    table.py     the table printed at the end
    compare.py   --compare A.json B.json: per-stage changes against the noise
    plot.py      --plot F.png (matplotlib, imported only there)
    command.py   the sub-command's arguments and run

Importing this package costs nothing: every module above is imported where used.
"""
