#!/usr/bin/python3
"""Run a command under the seccomp filter that a systemd unit's
SystemCallFilter= lines make, for hosts where systemd is not PID 1 (CI
containers) and `systemd-run` cannot start the unit itself.

    seccomp_exec.py UNIT_FILE -- COMMAND [ARG...]

It follows systemd's rules (systemd.exec(5), "SystemCallFilter="):
* the first SystemCallFilter= line decides the mode: without "~" it is an
  allow list (everything else is denied), with "~" a deny list;
* later lines without "~" add to the allow list, lines with "~" take
  their calls out of it (or add to the deny list);
* "@group" names are expanded by `systemd-analyze syscall-filter`, so the
  groups are those of the systemd installed here;
* a denied call kills the process (SIGSYS), as systemd does when
  SystemCallErrorNumber= is not set; with --log, denied calls are allowed
  and logged by the kernel instead (audit), to find what is missing;
* no_new_privs is set first, as NoNewPrivileges=yes does.

Only the native architecture is filtered (SystemCallArchitectures=native).
Needs Debian's python3-seccomp (libseccomp's Python binding), so it runs
with /usr/bin/python3.
"""

import os
import subprocess
import sys

import seccomp


def unit_filter_lines(unit_path):
    """The values of every SystemCallFilter= line of [Service], in order."""
    values = []
    section = None
    with open(unit_path, encoding="utf-8") as unit:
        for raw in unit:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, _, value = line.partition("=")
            if section == "Service" and key.strip() == "SystemCallFilter":
                values.append(value.strip())
    return values


def expand(name, cache):
    """The system calls of a name: itself, or every member of an @group."""
    if not name.startswith("@"):
        return {name}
    if name in cache:
        return cache[name]
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    calls = set()
    for line in out.splitlines():
        if not line.startswith("    "):
            continue
        member = line.strip()
        if not member or member.startswith("#"):
            continue
        calls |= expand(member, cache)
    cache[name] = calls
    return calls


def resolve(lines):
    """(allow_list_mode, set of calls) after applying every line."""
    cache = {}
    allow_mode = None
    calls = set()
    for value in lines:
        if not value:
            # An empty assignment resets the list.
            allow_mode, calls = None, set()
            continue
        deny = value.startswith("~")
        names = value.lstrip("~").split()
        members = set().union(*(expand(n, cache) for n in names))
        if allow_mode is None:
            allow_mode = not deny
            calls = set(members)
        elif allow_mode:
            calls = calls - members if deny else calls | members
        else:
            calls = calls | members if deny else calls - members
    return allow_mode, calls


def main(argv):
    log = "--log" in argv
    argv = [a for a in argv if a != "--log"]
    if len(argv) < 4 or argv[2] != "--":
        sys.exit(__doc__)
    unit, command = argv[1], argv[3:]
    allow_mode, calls = resolve(unit_filter_lines(unit))
    if allow_mode is None:
        sys.exit(f"{unit}: no SystemCallFilter= line")
    denied_action = seccomp.LOG if log else seccomp.KILL_PROCESS
    default, rule = (denied_action, seccomp.ALLOW) if allow_mode else (seccomp.ALLOW, denied_action)
    flt = seccomp.SyscallFilter(defaction=default)
    unknown = []
    for call in sorted(calls):
        try:
            flt.add_rule(rule, call)
        except (RuntimeError, ValueError):
            # A name systemd knows but this libseccomp or architecture
            # does not (e.g. 32-bit-only calls): systemd skips them too.
            unknown.append(call)
    mode = "allow" if allow_mode else "deny"
    print(
        f"seccomp_exec: {mode} list of {len(calls) - len(unknown)} calls from {unit} "
        f"({len(unknown)} unknown here, skipped)",
        file=sys.stderr,
    )
    flt.load()  # sets no_new_privs first (libseccomp's default)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
