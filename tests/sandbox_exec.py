"""Run a command under the seccomp rules a unit file's settings make systemd install.

    python tests/sandbox_exec.py UNIT_FILE COMMAND [ARG...]

systemd is not PID 1 on the development machine or in CI, so this rebuilds, from the unit file,
the filters systemd 252 loads before it executes the service, and executes the command under
them (every child inherits them, as under systemd):

* ``SystemCallFilter=`` (an allow list, then ``~`` removals; groups expanded by
  ``systemd-analyze syscall-filter``) with ``SystemCallErrorNumber=EPERM``;
* ``MemoryDenyWriteExecute=yes`` (systemd's ``seccomp_memory_deny_write_execute``): ``mmap``
  asking for PROT_WRITE|PROT_EXEC and ``mprotect``/``pkey_mprotect`` adding PROT_EXEC fail;
* ``RestrictAddressFamilies=``: ``socket()`` of another family fails with EAFNOSUPPORT.

x86-64 only. The mount, user and capability sandboxing is not reproduced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
AUDIT_ARCH_X86_64 = 0xC000003E
PROT_WRITE, PROT_EXEC = 2, 4
LD_W_ABS, JEQ_K, AND_K, RET_K = 0x20, 0x15, 0x54, 0x06
ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
ARCH, NR, ARG0, ARG2 = 4, 0, 16, 32  # offsets in struct seccomp_data (low words of the args)

Instruction = tuple[int, int, int, int]  # code, jump if true, jump if false, constant


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def exec_start(unit: Path) -> list[str]:
    """The unit's ExecStart= command line, run with this checkout's wapool."""
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart")]
    assert [line.split("=", 1)[0] for line in lines] == ["ExecStart"], lines
    wapool = str(Path(sys.executable).parent / "wapool")
    command = lines[0].removeprefix("ExecStart=").replace("/opt/wapool/venv/bin/wapool", wapool)
    return shlex.split(command)


def syscall_numbers() -> dict[str, int]:
    found = re.findall(r"#define __NR_(\w+) (\d+)", UNISTD.read_text())
    return {name: int(number) for name, number in found}


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """System call names in a systemd group, recursively (``@x`` or a plain name)."""
    if not group.startswith("@"):
        return {group}
    seen = set() if seen is None else seen
    seen.add(group)
    listing = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= expand(item, seen) if item.startswith("@") and item not in seen else {item}
    return {n for n in names if not n.startswith("@")}


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def allowed_syscalls(filters: Iterable[str]) -> set[int]:
    names: set[str] = set()
    for entry in filters:
        deny = entry.startswith("~")
        for group in entry.lstrip("~").split():
            names = names - expand(group) if deny else names | expand(group)
    table = syscall_numbers()
    return {table[n] for n in names if n in table}


def allow_list_program(allowed: set[int], error: int) -> list[Instruction]:
    program: list[Instruction] = [(LD_W_ABS, 0, 0, ARCH), (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
                                  (RET_K, 0, 0, RET_ERRNO | error), (LD_W_ABS, 0, 0, NR)]  # fmt: skip
    for number in sorted(allowed):
        program += [(JEQ_K, 0, 1, number), (RET_K, 0, 0, ALLOW)]
    return [*program, (RET_K, 0, 0, RET_ERRNO | error)]


def argument_program(mdwe: bool, families: set[int] | None) -> list[Instruction]:
    """mmap/mprotect/pkey_mprotect protections and socket() families (allow otherwise)."""
    program: list[Instruction] = [(LD_W_ABS, 0, 0, NR)]
    if mdwe:
        program += [
            (JEQ_K, 0, 4, 9),  # mmap
            (LD_W_ABS, 0, 0, ARG2),
            (AND_K, 0, 0, PROT_WRITE | PROT_EXEC),
            (JEQ_K, 0, 1, PROT_WRITE | PROT_EXEC),
            (RET_K, 0, 0, RET_ERRNO | errno.EPERM),
            (LD_W_ABS, 0, 0, NR),
        ]
        for number in (10, 329):  # mprotect, pkey_mprotect
            program += [
                (JEQ_K, 0, 4, number),
                (LD_W_ABS, 0, 0, ARG2),
                (AND_K, 0, 0, PROT_EXEC),
                (JEQ_K, 0, 1, PROT_EXEC),
                (RET_K, 0, 0, RET_ERRNO | errno.EPERM),
                (LD_W_ABS, 0, 0, NR),
            ]
    if families is not None:
        program += [(JEQ_K, 0, len(families) + 2, 41), (LD_W_ABS, 0, 0, ARG0)]  # socket
        for left, family in enumerate(sorted(families)):
            program.append((JEQ_K, len(families) - left, 0, family))
        program.append((RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT))
    return [*program, (RET_K, 0, 0, ALLOW)]


def load(program: list[Instruction]) -> None:
    filters = (SockFilter * len(program))(*(SockFilter(*i) for i in program))
    fprog = SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, MODE_FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def install(unit: Path) -> None:
    settings = unit_settings(unit)
    error = getattr(errno, (settings.get("SystemCallErrorNumber") or ["EPERM"])[-1])
    families = None
    if "RestrictAddressFamilies" in settings:
        names = " ".join(settings["RestrictAddressFamilies"]).split()
        families = {int(getattr(socket, name)) for name in names}
    mdwe = (settings.get("MemoryDenyWriteExecute") or ["no"])[-1] in ("yes", "true", "1")
    load(argument_program(mdwe, families))
    if "SystemCallFilter" in settings:
        load(allow_list_program(allowed_syscalls(settings["SystemCallFilter"]), error))


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    os.execvp(sys.argv[2], sys.argv[2:])
