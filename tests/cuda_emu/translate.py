"""Rewrite csrc/cuda sources into C++ for the CPU emulator (tests/cuda_emu/include/tg_emu.h).

Only three CUDA constructs are not plain C++ once the emulator's headers define the built-ins;
each is rewritten in place (line structure kept, so compiler messages point at the original
lines):

  k<<<grid, block, smem, stream>>>(args)  ->  ::tg_emu::launch_kernel("k", k, ::tg_emu::LaunchConfig(grid, block, smem, stream), args)
  __shared__ T name[N];                   ->  auto& name = ::tg_emu::shared_var<T[N]>(__COUNTER__, "name");
  extern __shared__ T name[];             ->  T* name = ::tg_emu::dynamic_smem<T>();
  asm volatile("cp.async....")            ->  ::tg_emu::cp_async(...) / cp_async_commit() / cp_async_wait(n)
  __launch_bounds__(N) k(...) {           ->  k(...) { ::tg_emu::check_launch_bounds(N);

Any other inline PTX, or a __shared__ declaration of another form, is an error naming the file
and line, so a new construct in csrc/cuda fails loudly here rather than being skipped.
"""
from __future__ import annotations

import re


class TranslationError(ValueError):
    pass


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _match_paren(text: str, open_pos: int, filename: str) -> int:
    """Index of the ')' that closes the '(' at open_pos (string literals skipped)."""
    depth, i, n = 0, open_pos, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise TranslationError(f"{filename}:{_line(text, open_pos)}: unbalanced parentheses")


def _split_top(s: str, sep: str, opening: str = "([{") -> list[str]:
    """Split at `sep` outside parentheses, brackets (and `opening`'s other brackets: "<" for template
    arguments) and string literals."""
    closing = opening.translate(str.maketrans("([{<", ")]}>"))
    out, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c == '"':
            j = i + 1
            while s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            cur.append(s[i:j + 1])
            i = j + 1
            continue
        if c in opening:
            depth += 1
        elif c in closing:
            depth -= 1
        if c == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


# ------------------------------------------------------------------------------ launches
def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression that ends just before `end` (e.g. `k<T, 4>` or `kernel`)."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments
        depth = 0
        while i > 0:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def _launches(text: str, filename: str) -> str:
    out, pos = [], 0
    while True:
        i = text.find("<<<", pos)
        if i < 0:
            break
        start = _kernel_start(text, i)
        name = text[start:i].strip()
        if not name:
            raise TranslationError(f"{filename}:{_line(text, i)}: no kernel before <<<")
        j = text.find(">>>", i + 3)
        if j < 0:
            raise TranslationError(f"{filename}:{_line(text, i)}: <<< without >>>")
        cfg = text[i + 3:j]
        k = j + 3
        while text[k].isspace() or text[k] == "\\":
            k += 1
        if text[k] != "(":
            raise TranslationError(f"{filename}:{_line(text, i)}: expected ( after >>>")
        close = _match_paren(text, k, filename)
        args = text[k + 1:close]
        label = " ".join(name.split())
        call = f'::tg_emu::launch_kernel("{label}", {name}, ::tg_emu::LaunchConfig({cfg})'
        call += f", {args})" if args.strip() else ")"
        out.append(text[pos:start])
        out.append(call)
        pos = close + 1
    out.append(text[pos:])
    return "".join(out)


# ------------------------------------------------------------------------------ launch bounds
def _launch_bounds(text: str, filename: str) -> str:
    """__launch_bounds__(N) kernel(...) { ... -> the body starts by checking blockDim against N (a
    launch with more threads fails on the hardware: too many resources requested)."""
    out, pos = [], 0
    for m in re.finditer(r"__launch_bounds__\s*(?=\()", text):
        if m.start() < pos:
            continue
        close = _match_paren(text, m.end(), filename)
        bound = text[m.end() + 1:close]
        params = text.find("(", close + 1)
        body = -1 if params < 0 else text.find("{", _match_paren(text, params, filename))
        if body < 0:
            raise TranslationError(f"{filename}:{_line(text, m.start())}: __launch_bounds__ without a kernel body")
        out.append(text[pos:m.start()])
        out.append(text[close + 1:body + 1])
        max_threads = _split_top(bound, ",", "([{<")[0].strip()  # a comma inside <> does not count
        out.append(f" ::tg_emu::check_launch_bounds({max_threads});")
        pos = body + 1
    out.append(text[pos:])
    return "".join(out)


# ------------------------------------------------------------------------------ inline PTX
_CP_ASYNC = re.compile(r"cp\.async\.c[ag]\.shared\.global \[%0\], \[%1\], (\d+), %2;")


def _asm_statement(body: str, filename: str, line: int) -> str:
    parts = _split_top(body, ":")
    template = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', parts[0])).replace("\\n", "").strip()
    operands = []
    for section in parts[1:3]:
        for op in _split_top(section, ","):
            op = op.strip()
            if op:
                m = re.fullmatch(r'"[^"]*"\s*\((.*)\)', op, re.S)
                if not m:
                    raise TranslationError(f"{filename}:{line}: cannot parse asm operand {op!r}")
                operands.append(m.group(1).strip())
    m = _CP_ASYNC.fullmatch(template)
    if m and len(operands) == 3:
        return (f"::tg_emu::cp_async(static_cast<unsigned>({operands[0]}), {operands[1]}, "
                f"{m.group(1)}, {operands[2]})")
    if template == "cp.async.commit_group;" and not operands:
        return "::tg_emu::cp_async_commit()"
    if template == "cp.async.wait_group %0;" and len(operands) == 1:
        return f"::tg_emu::cp_async_wait({operands[0]})"
    if template == "cp.async.wait_all;" and not operands:
        return "::tg_emu::cp_async_wait(0)"
    raise TranslationError(f"{filename}:{line}: inline PTX the emulator does not know: {template!r}")


def _asm(text: str, filename: str) -> str:
    out, pos = [], 0
    for m in re.finditer(r"\basm\b\s*(?:volatile\b\s*)?(?=\()", text):
        if m.start() < pos:
            continue
        open_pos = m.end()
        close = _match_paren(text, open_pos, filename)
        out.append(text[pos:m.start()])
        body = text[open_pos + 1:close]
        stmt = _asm_statement(body, filename, _line(text, m.start()))
        out.append(stmt + "\n" * body.count("\n"))
        pos = close + 1
    out.append(text[pos:])
    return "".join(out)


# ------------------------------------------------------------------------------ shared memory
_ALIGN = r"(?:__align__\s*\(\s*\d+\s*\)\s*)?"
_EXTERN = re.compile(r"extern\s+__shared__\s+" + _ALIGN + r"([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)\s+"
                     + _ALIGN + r"(\w+)\s*\[\s*\]\s*;")
_STATIC = re.compile(r"__shared__\s+" + _ALIGN + r"([A-Za-z_][\w:]*(?:\s+[A-Za-z_][\w:]*)*?)\s+"
                     + _ALIGN + r"(\w+)\s*((?:\[[^\]]+\]\s*)+);")


def _shared(text: str, filename: str) -> str:
    text = _EXTERN.sub(lambda m: f"{m.group(1)}* {m.group(2)} = ::tg_emu::dynamic_smem<{m.group(1)}>();", text)
    text = _STATIC.sub(lambda m: (f"auto& {m.group(2)} = ::tg_emu::shared_var<{m.group(1)}"
                                  f"{''.join(m.group(3).split())}>(__COUNTER__, \"{m.group(2)}\");"), text)
    for m in re.finditer(r"__shared__", text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text[line_start:m.start()].lstrip().startswith("//"):
            continue  # a comment
        raise TranslationError(f"{filename}:{_line(text, m.start())}: a __shared__ declaration the "
                               "emulator cannot rewrite")
    return text


def translate(text: str, filename: str = "<cuda source>") -> str:
    """The emulator's C++ for one .cu / .cuh file."""
    return _shared(_asm(_launch_bounds(_launches(text, filename), filename), filename), filename)
