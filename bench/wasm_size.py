#!/usr/bin/env python3
"""What a Wasm module is made of: bytes per section, and code bytes per Rust crate.

    bench/wasm_size.py MODULE.wasm [--top N] [--json]

The per-crate figures need the `name` section, so give it an unstripped build, e.g.
    CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/size \
        cargo build --target wasm32-wasip1 --release --lib
(the shipped module is stripped; its code is the same). A function is counted to the
first crate its (legacy-mangled) symbol names that is not core/alloc/std, so
`drop_in_place<boon::Schema>` counts to boon: the code exists because that crate is linked.
Data (read-only tables such as Unicode or ICU data) carries no names after LTO; the
`data` line is the whole data section.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys

SECTION_NAMES = {0: "custom", 1: "type", 2: "import", 3: "function", 4: "table", 5: "memory",
                 6: "global", 7: "export", 8: "start", 9: "element", 10: "code", 11: "data",
                 12: "datacount"}
STD = {"core", "alloc", "std", "compiler_builtins", "panic_abort", "std_detect", "dlmalloc",
       "wasi", "rustc_demangle", "hashbrown_std"}


def uleb(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def name(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = uleb(buf, pos)
    return buf[pos:pos + n].decode("utf-8", "replace"), pos + n


def sections(buf: bytes):
    pos = 8
    while pos < len(buf):
        sid = buf[pos]
        size, body = uleb(buf, pos + 1)
        yield sid, pos, body, body + size
        pos = body + size


def imported_functions(buf: bytes, start: int) -> int:
    count, pos = uleb(buf, start)
    funcs = 0
    for _ in range(count):
        _, pos = name(buf, pos)
        _, pos = name(buf, pos)
        kind = buf[pos]
        pos += 1
        if kind == 0:  # func: type index
            _, pos = uleb(buf, pos)
            funcs += 1
        elif kind == 1:  # table: reftype + limits
            pos += 1
            flags, pos = uleb(buf, pos)
            _, pos = uleb(buf, pos)
            if flags & 1:
                _, pos = uleb(buf, pos)
        elif kind == 2:  # memory: limits
            flags, pos = uleb(buf, pos)
            _, pos = uleb(buf, pos)
            if flags & 1:
                _, pos = uleb(buf, pos)
        elif kind == 3:  # global: valtype + mut
            pos += 2
    return funcs


def function_names(buf: bytes, start: int, end: int) -> dict[int, str]:
    _, pos = name(buf, start)  # "name"
    out = {}
    while pos < end:
        sub = buf[pos]
        size, pos = uleb(buf, pos + 1)
        if sub == 1:
            count, p = uleb(buf, pos)
            for _ in range(count):
                idx, p = uleb(buf, p)
                out[idx], p = name(buf, p)
        pos += size
    return out


PATH_START = re.compile(r"(?:^|\$LT\$|\$u20\$|\$C\$|\$RF\$|\$BP\$|\$u5b\$|::)_?([a-z_][a-z0-9_]*)\.\.")
V0_CRATE = re.compile(r"C(?:s[0-9a-zA-Z]*_)?(\d+)")


def crate_of(symbol: str) -> str:
    """First non-std crate a mangled symbol mentions (`_ZN4boon8compiler...`, or v0
    `_R...C..._4core...`); exported `proxy_on_*` entry points count to proxy_wasm, the
    remaining unmangled names (allocator, memcpy, ...) to std."""
    if symbol.startswith("proxy_"):
        return "proxy_wasm"
    if symbol.startswith("_R"):
        for m in V0_CRATE.finditer(symbol):
            n = int(m.group(1))
            crate = symbol[m.end():m.end() + n]
            if crate and crate not in STD and re.fullmatch(r"[a-z_][a-z0-9_]*", crate):
                return crate
        return "std"
    if not symbol.startswith("_ZN"):
        return "std"
    body = symbol[3:]
    idents = []
    pos = 0
    while pos < len(body) and body[pos].isdigit():
        m = re.match(r"\d+", body[pos:])
        n = int(m.group())
        pos += len(m.group())
        idents.append(body[pos:pos + n])
        pos += n
    candidates = []
    if idents and re.fullmatch(r"[a-z_][a-z0-9_]*", idents[0]):
        candidates.append(idents[0])
    candidates += PATH_START.findall("::".join(idents))
    for crate in candidates:
        if crate not in STD:
            return crate
    return "std"


def analyze(path: str) -> dict:
    buf = open(path, "rb").read()
    per_section = collections.Counter()
    nimports = 0
    code = None
    names: dict[int, str] = {}
    for sid, head, start, end in sections(buf):
        label = SECTION_NAMES.get(sid, str(sid))
        if sid == 0:
            label = "custom:" + name(buf, start)[0]
            if label == "custom:name":
                names = function_names(buf, start, end)
        per_section[label] += end - head
        if sid == 2:
            nimports = imported_functions(buf, start)
        if sid == 10:
            code = (start, end)
    per_crate = collections.Counter()
    functions = []
    if code:
        count, pos = uleb(buf, code[0])
        for i in range(count):
            size, body = uleb(buf, pos)
            sym = names.get(nimports + i, f"func{nimports + i}")
            per_crate[crate_of(sym) if names else "[no names]"] += body + size - pos
            functions.append((body + size - pos, sym))
            pos = body + size
    functions.sort(reverse=True)
    return {"total": len(buf), "sections": dict(per_section.most_common()),
            "code_by_crate": dict(per_crate.most_common()), "functions": functions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("module")
    ap.add_argument("--top", type=int, default=25, help="largest functions to list")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = analyze(args.module)
    if args.json:
        r["functions"] = r["functions"][:args.top]
        print(json.dumps(r, indent=2))
        return 0
    print(f"{args.module}: {r['total']:,} bytes")
    print("\n| section | bytes |\n| --- | ---: |")
    for k, v in r["sections"].items():
        print(f"| {k} | {v:,} |")
    print("\n| crate (code section) | bytes | share of code |\n| --- | ---: | ---: |")
    code_total = sum(r["code_by_crate"].values()) or 1
    for k, v in r["code_by_crate"].items():
        print(f"| {k} | {v:,} | {100 * v / code_total:.1f}% |")
    print(f"\nlargest {args.top} functions:")
    for size, sym in r["functions"][:args.top]:
        print(f"{size:>9,}  {sym[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
