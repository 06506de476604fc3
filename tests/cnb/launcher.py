#!/usr/bin/env python3
"""Usage: launcher.py <layers-dir> <report.json> <command> [args...]

A stand-in for the Cloud Native Buildpacks launcher (buildpacks/lifecycle,
launch/launcher.go and launch/exec_d.go), for tests/cnb.rs. It does what the
real launcher does before a process, in the same order, in the same process:

  1. for every layer <layers-dir>/<buildpack>/<layer>/ with a bin/, puts that
     bin/ first on PATH (the real launcher does this for launch layers);
  2. runs every file in <layers-dir>/<buildpack>/<layer>/exec.d/, in name
     order, by its path, with no arguments, in the current directory, with a
     pipe on file descriptor 3; reads the pipe until end-of-file, then waits
     for the program, and fails if it exited non-zero (exit 99) or wrote
     anything but TOML `NAME = "value"` lines (exit 98); adds those variables
     to the environment;
  3. exec()s <command> with that environment: the app keeps this pid.

Unlike the real one it gives up after TIMEOUT seconds (exit 97) instead of
hanging, and before step 3 it writes <report.json>: for each exec.d program
its path, exit status, seconds from start to exit and end-of-file, raw
output, parsed variables, and the inode of its fd 3 pipe.
"""
import json
import os
import select
import subprocess
import sys
import time
import tomllib

TIMEOUT = 10.0


def fail(code, message):
    print(f"launcher: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run_exec_d(path, env):
    r, w = os.pipe()
    pipe_inode = os.fstat(w).st_ino

    def fd3():
        # In the child: the write end becomes fd 3, inheritable (dup2 clears
        # close-on-exec), as Go's ExtraFiles does.
        if w == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(w, 3)

    started = time.monotonic()
    child = subprocess.Popen(
        [path], env=env, stdin=subprocess.DEVNULL, preexec_fn=fd3, close_fds=False
    )
    os.close(w)
    out = b""
    deadline = started + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            child.kill()
            fail(97, f"{path}: fd 3 still open after {TIMEOUT} s (a child kept it?)")
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        out += chunk
    os.close(r)
    try:
        status = child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        fail(97, f"{path}: still running {TIMEOUT} s after closing fd 3")
    seconds = time.monotonic() - started
    if status != 0:
        fail(99, f"{path}: exited with status {status}")
    try:
        parsed = tomllib.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        fail(98, f"{path}: output is not TOML ({e}): {out!r}")
    for name, value in parsed.items():
        if not isinstance(value, str):
            fail(98, f"{path}: {name} is not a string: {value!r}")
    return {
        "path": path,
        "status": status,
        "seconds": seconds,
        "toml": out.decode("utf-8"),
        "env": parsed,
        "pipe_inode": pipe_inode,
    }


def main():
    if len(sys.argv) < 4:
        fail(2, __doc__.splitlines()[0])
    layers, report_path, command = sys.argv[1], sys.argv[2], sys.argv[3:]
    env = dict(os.environ)

    layer_dirs = []
    for bp in sorted(os.listdir(layers)):
        bp_dir = os.path.join(layers, bp)
        if not os.path.isdir(bp_dir):
            continue
        for layer in sorted(os.listdir(bp_dir)):
            layer_dir = os.path.join(bp_dir, layer)
            if os.path.isdir(layer_dir):
                layer_dirs.append(layer_dir)

    for layer_dir in layer_dirs:
        bin_dir = os.path.join(layer_dir, "bin")
        if os.path.isdir(bin_dir):
            env["PATH"] = bin_dir + (":" + env["PATH"] if env.get("PATH") else "")

    runs = []
    for layer_dir in layer_dirs:
        exec_d = os.path.join(layer_dir, "exec.d")
        if not os.path.isdir(exec_d):
            continue
        for name in sorted(os.listdir(exec_d)):
            path = os.path.join(exec_d, name)
            # Like os.ReadDir + !IsDir(): a symlink counts as a file.
            if os.path.isdir(path) and not os.path.islink(path):
                continue
            run = run_exec_d(path, env)
            env.update(run["env"])
            runs.append(run)

    tmp = report_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "execd": runs}, f)
    os.rename(tmp, report_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
