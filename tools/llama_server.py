"""Build llama.cpp's own server (``llama-server``) once per machine and cache it.

The source is the llama.cpp tree that the llama-cpp-python sdist vendors (MIT), at the version
of llama-cpp-python installed in this environment, so both local engines run the same llama.cpp.
The build cache is a fixed per-user place, NOT $VAS_API_CACHE_DIR (the tests point that variable
at a temporary folder)::

    $XDG_CACHE_HOME/vas-api-build/llama-server/   (else ~/.cache/vas-api-build/llama-server/)
        llama-cpp-python-<version>/bin/llama-server    the binary (stable path per version)
        llama-cpp-python-<version>/build.json          build time, jobs, date
        current                                        a text file: the binary's path
        build.log                                      the last build's output

Usage (no stdin needed; safe to re-run: it returns at once when the cached binary runs)::

    python tools/llama_server.py            # build if needed, print the binary's path
    python tools/llama_server.py --jobs 2   # parallel compile jobs (default: CPU count)

Python callers use `ensure_llama_server()`; `vas_api.local.find_llama_server()` reads the same
cache without building. A build takes about 8 to 13 minutes on 2 cores. It needs cmake and a C++
compiler; the sdist comes from PyPI through pip (``pip download``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

__all__ = ["build_root", "binary_path", "ensure_llama_server"]


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vas_api.local import llama_server_cache as build_root  # noqa: E402  (one definition)


def _llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit(
            "llama-cpp-python is not installed, so its llama.cpp version is unknown: "
            "pip install 'vas-api[local]' first."
        ) from exc


def binary_path(version: str | None = None) -> Path:
    """Where the binary for llama-cpp-python `version` (default: the installed one) lives."""
    v = version or _llama_cpp_version()
    return build_root() / f"llama-cpp-python-{v}" / "bin" / "llama-server"


def _runs(binary: Path) -> bool:
    if not binary.is_file():
        return False
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, timeout=60, env=env,
            stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def _fetch_source(version: str, work: Path, log) -> Path:
    """Download the llama-cpp-python sdist and unpack its vendored llama.cpp; its path."""
    cached = build_root() / "src" / f"llama_cpp_python-{version}.tar.gz"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", str(cached.parent)],
            check=True, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(cached) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(work, members=members, filter="data")
    return work / prefix


def _no_amx_flags() -> list[str]:
    """Compiler flags that keep Intel AMX out of a native x86-64 build.

    -march=native turns AMX on wherever cpuid lists it, but a virtual machine may list AMX
    without letting a process use its tile registers: then the first ``ldtilecfg`` is a
    general protection fault (measured here, 2026-12-01: the venv's llama-cpp-python build
    crashes in libggml-cpu.so at ldtilecfg on a 2-core Xeon VM that lists amx_tile). AMX only
    speeds up large matrix products, so the test binary goes without it.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    flags = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    return [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]


def ensure_llama_server(jobs: int | None = None, quiet: bool = False) -> Path:
    """The path of a working llama-server binary, building it first when none is cached.

    Args:
        jobs: parallel compile jobs (default: the CPU count).
        quiet: print nothing but errors.

    Returns:
        The binary's path (run it with LD_LIBRARY_PATH set to its folder).

    Raises:
        SystemExit: llama-cpp-python is not installed, or the build failed (the message names
            the build log).
    """
    version = _llama_cpp_version()
    binary = binary_path(version)
    root = build_root()
    if _runs(binary):
        (root / "current").write_text(str(binary))
        return binary
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "build.log"
    jobs = jobs or os.cpu_count() or 1
    if not quiet:
        print(f"building llama-server from llama-cpp-python {version}'s llama.cpp "
              f"({jobs} jobs, about 8-13 min on 2 cores); log: {log_path}", file=sys.stderr)
    start = time.monotonic()
    with log_path.open("w") as log, tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            src = _fetch_source(version, Path(tmp), log)
            build = Path(tmp) / "build"
            subprocess.run(
                ["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", *_no_amx_flags()],
                check=True, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            subprocess.run(
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
                check=True, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        except (subprocess.CalledProcessError, OSError) as exc:
            raise SystemExit(f"building llama-server failed ({exc}); see {log_path}") from exc
        built = build / "bin" / "llama-server"
        out_dir = binary.parent
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        for f in (build / "bin").iterdir():  # the binary and any shared libraries next to it
            if f.is_file() and (f == built or ".so" in f.name):
                shutil.copy2(f, out_dir / f.name)
        shutil.copy2(src / "LICENSE", out_dir.parent / "LICENSE")
    if not _runs(binary):
        raise SystemExit(f"the built llama-server at {binary} does not run; see {log_path}")
    (root / "current").write_text(str(binary))
    seconds = time.monotonic() - start
    (binary.parent.parent / "build.json").write_text(json.dumps({
        "llama_cpp_python": version, "seconds": round(seconds, 1), "jobs": jobs,
        "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }) + "\n")
    if not quiet:
        print(f"built llama-server in {seconds:.0f} s", file=sys.stderr)
    return binary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: build if needed, print the binary's path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    parser.add_argument("--quiet", action="store_true", help="print only the path")
    args = parser.parse_args(argv)
    print(ensure_llama_server(jobs=args.jobs, quiet=args.quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
