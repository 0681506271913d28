"""Memory of a running process from /proc, for the bundle tests and benchmarks."""


def status_fields(pid, keys):
    """The given /proc/PID/status fields (RssAnon, RssFile, VmRSS, ...) in bytes; {} once
    the process is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in keys:
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields
