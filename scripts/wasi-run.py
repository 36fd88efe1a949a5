#!/usr/bin/env python3
"""Cargo's runner for wasm32-wasip1 test binaries: runs a WASI command module under
wasmtime (the PyPI wheel, no compile step) with its arguments, stdio and exit code.

Used as CARGO_TARGET_WASM32_WASIP1_RUNNER by `make unit-wasm`, so the core's unit tests
also run as 32-bit Wasm, the way Envoy runs the module.
"""
import os
import sys

import wasmtime


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: wasi-run.py MODULE.wasm [ARGS...]", file=sys.stderr)
        return 2
    module_path = sys.argv[1]
    config = wasmtime.Config()
    config.cache = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module.from_file(engine, module_path)

    wasi = wasmtime.WasiConfig()
    # argv[0] is the program name, as a native test binary sees it.
    wasi.argv = [os.path.basename(module_path)] + sys.argv[2:]
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    # libtest reads RUST_TEST_THREADS etc.; pass the environment through.
    wasi.env = [[k, v] for k, v in os.environ.items()]
    # Tests that read fixtures use paths relative to the crate root (cargo's cwd).
    wasi.preopen_dir(".", ".")

    store = wasmtime.Store(engine)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    # The lib links the proxy-wasm glue, whose host imports (env::proxy_*) only Envoy
    # provides. Unit tests never reach the glue: a call would trap and fail the test.
    linker.define_unknown_imports_as_traps(module)
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    try:
        start(store)
    except wasmtime.ExitTrap as exit_trap:
        return exit_trap.code
    except wasmtime.Trap as trap:
        print(f"wasm trap: {trap}", file=sys.stderr)
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
