"""fsync_cost.py MODE GAP_S [FILE]: what one sync costs on this machine, alone.

300 rounds; each writes 4 KiB (MODE append-*: at the end of the file; over-*: over blocks
written and synced before), syncs (*-fsync, *-fdata for fdatasync, *-none for no sync), then
sleeps GAP_S seconds. Prints the CPU per round (getrusage: user + system), the sync's
median and p99 time, and voluntary context switches per round. Compare a mode with the same
mode's -none run: the loop's own cost (the sleep and its wake-up) is in both.
FILE (default: fsync_test.bin here) is created and removed; put it on the file system to test.
"""
import os, time, resource, sys
mode = sys.argv[1]; n = 300; gap = float(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "fsync_test.bin"
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
if mode.startswith("over"):
    os.write(fd, b"\0" * (4096 * n)); os.fsync(fd)
buf = b"x" * 4096
r0 = resource.getrusage(resource.RUSAGE_SELF); lat = []
for i in range(n):
    os.pwrite(fd, buf, 4096 * i)
    a = time.perf_counter()
    if mode.endswith("data"): os.fdatasync(fd)
    elif mode.endswith("none"): pass
    else: os.fsync(fd)
    lat.append(time.perf_counter() - a)
    time.sleep(gap)
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n * 1e6
lat.sort()
print(f"{mode:14s} gap {gap*1000:.0f} ms: CPU {cpu:6.1f} µs/iter (sys {(r1.ru_stime-r0.ru_stime)/n*1e6:6.1f}), sync p50 {lat[n//2]*1e6:6.0f} µs p99 {lat[int(n*.99)]*1e6:6.0f} µs, nvcsw {(r1.ru_nvcsw-r0.ru_nvcsw)/n:.1f}")
os.close(fd); os.unlink(path)
