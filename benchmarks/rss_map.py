#!/usr/bin/env python3
"""Where a process's resident memory comes from: RSS per mapping (each shared library, the binary, heap, stacks,
anonymous) from /proc/PID/smaps, and for the binary's own pages, which ELF section and which Swift module (by the
symbol each resident page starts in, from `nm`) they belong to, found through /proc/PID/pagemap (needs root).

Usage: benchmarks/rss_map.py PID [BINARY]        (BINARY defaults to the process's executable)
With no PID, starts `waypoint run` with the embedded demo config on spare ports, waits 5 s, and maps it.
"""
import bisect
import collections
import os
import re
import struct
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def module_of(symbol):
    """The Swift module a mangled name belongs to (`$s<len><Module>...`), or a coarse group for C symbols."""
    m = re.match(r"\$s(\d+)([A-Za-z_]\w*)", symbol)
    if m:
        name = m.group(2)[: int(m.group(1))]
        return {"s": "Swift stdlib", "S": "Swift stdlib"}.get(name, name)
    if symbol.startswith(("$ss", "$sS")):
        return "Swift stdlib"
    if symbol.startswith(("swift_", "_swift", "__swift")):
        return "Swift runtime"
    return "C / unnamed"


def sections(binary):
    """(start address, end address, name) of each allocated ELF section."""
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    result = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if m and "A" in m.group(4) and int(m.group(2), 16) > 0:
            start = int(m.group(2), 16)
            result.append((start, start + int(m.group(3), 16), m.group(1)))
    return sorted(result)


def symbols(binary):
    out = subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True).stdout
    addresses, names = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            addresses.append(int(parts[0], 16))
            names.append(parts[2])
    return addresses, names


def main():
    started = None
    if len(sys.argv) > 1:
        pid = int(sys.argv[1])
    else:
        binary = os.environ.get("WAYPOINT_BIN", ".build/release/waypoint")
        started = subprocess.Popen(
            [binary, "run", "--http-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--access-log", "off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(5)
        pid = started.pid
    binary = os.path.realpath(sys.argv[2] if len(sys.argv) > 2 else f"/proc/{pid}/exe")
    try:
        report(pid, binary)
    finally:
        if started:
            started.terminate()


def report(pid, binary):
    per_mapping = collections.Counter()
    binary_maps = []  # (start, end, file offset)
    current = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \d+\s*(.*)", line)
            if m:
                path = m.group(5) or "[anonymous]"
                current = f"{os.path.basename(path)} {m.group(3)}"
                if os.path.realpath(path) == binary if path.startswith("/") else False:
                    binary_maps.append((int(m.group(1), 16), int(m.group(2), 16), int(m.group(4), 16)))
            elif line.startswith("Rss:"):
                per_mapping[current] += int(line.split()[1])
    total = sum(per_mapping.values())
    print(f"RSS {total} KiB in all")
    print("\nby mapping (KiB):")
    for name, kib in per_mapping.most_common(15):
        print(f"{kib:8} {name}")

    # The binary's resident pages, by section and by module. Its first mapping is at file offset 0, so a page's
    # link-time address is its address minus the load base.
    base = min(start - offset for start, _, offset in binary_maps)
    secs = sections(binary)
    addresses, names = symbols(binary)
    by_section, by_module = collections.Counter(), collections.Counter()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for start, end, _ in binary_maps:
            pagemap.seek(start // PAGE * 8)
            entries = pagemap.read((end - start) // PAGE * 8)
            for i in range(0, len(entries), 8):
                (entry,) = struct.unpack("<Q", entries[i:i + 8])
                if not entry >> 63 & 1:
                    continue
                address = start + i // 8 * PAGE - base
                section = next((name for s, e, name in secs if s <= address < e), "(between sections)")
                by_section[section] += PAGE // 1024
                j = bisect.bisect_right(addresses, address) - 1
                by_module[module_of(names[j]) if j >= 0 else "C / unnamed"] += PAGE // 1024
    print(f"\n{os.path.basename(binary)}: resident pages by section (KiB):")
    for name, kib in by_section.most_common(12):
        print(f"{kib:8} {name}")
    print(f"\n{os.path.basename(binary)}: resident pages by module of the symbol they start in (KiB):")
    for name, kib in by_module.most_common(14):
        print(f"{kib:8} {name}")


if __name__ == "__main__":
    main()
