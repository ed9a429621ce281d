#!/usr/bin/env python3
"""Fails when modules of herald-core import each other in a circle (docs/architecture.md,
"The domain"): each top-level module (a file, or a folder such as hub/) may use another only
if that one does not, directly or through others, use it back. Test modules are left out.
Prints every circle found, as the modules in it."""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "crates/core/src")
uses = {}
for path in sorted(src.rglob("*.rs")):
    module = path.relative_to(src).parts[0].removesuffix(".rs")
    if module == "lib":
        continue
    text = path.read_text().split("#[cfg(test)]")[0]
    text = re.sub(r"//[^\n]*|\"(?:[^\"\\]|\\.)*\"", "", text)
    names = set(re.findall(r"crate::([a-z_]+)", text))
    names |= {n for group in re.findall(r"crate::\{([^}]*)\}", text) for n in re.findall(r"(?:^|,)\s*([a-z_]+)", group)}
    uses.setdefault(module, set()).update(names - {module})

# Tarjan's strongly connected components: every component of more than one module is a circle.
index, low, stack, on_stack, circles = {}, {}, [], set(), []


def visit(module):
    index[module] = low[module] = len(index)
    stack.append(module)
    on_stack.add(module)
    for other in uses.get(module, ()):
        if other not in uses:
            continue
        if other not in index:
            visit(other)
            low[module] = min(low[module], low[other])
        elif other in on_stack:
            low[module] = min(low[module], index[other])
    if low[module] == index[module]:
        component = []
        while True:
            m = stack.pop()
            on_stack.discard(m)
            component.append(m)
            if m == module:
                break
        if len(component) > 1:
            circles.append(sorted(component))


for module in sorted(uses):
    if module not in index:
        visit(module)
for circle in circles:
    print(f"{src}: modules that import each other in a circle: {', '.join(circle)}")
    for m in circle:
        print(f"  {m} imports {', '.join(sorted(uses[m] & set(circle)))}")
sys.exit(1 if circles else 0)
