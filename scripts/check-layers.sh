#!/usr/bin/env bash
# The server's layers (docs/architecture.md, "Server"): each module of crates/server/src may
# import only modules of a lower layer, or its own module's files. From the top:
#
#   api                               routes
#   transport, listener, channels, demo   connections (and the other edges: sockets, Redis
#                                      channels, the demo's feeds)
#   app                               state and operations (chat, limits, mailboxes, node)
#   http                              the request vocabulary (errors, identity, replies)
#   auth, config                      token verification, configuration
#
# and below them herald-core. lib.rs (`serve`) is the top and may use every module.
# Reads every `crate::…` path in each file (imports, paths in code and attributes; comments
# and string literals ignored), and `super::…` paths that climb out of their module, and
# fails on any that points up or sideways, naming the file, the line and the rule it broke.
set -euo pipefail
cd "$(dirname "$0")/.."

# The directory to check may be given (default: the server's sources).
src=${1:-crates/server/src}
[ -d "$src" ] || { echo "check-layers: $src not found" >&2; exit 2; }

find "$src" -name '*.rs' | sort | xargs awk -v src="${src%/}/" '
BEGIN {
  rank["api"] = 5
  rank["transport"] = 4; rank["listener"] = 4; rank["channels"] = 4; rank["demo"] = 4
  rank["app"] = 3
  rank["http"] = 2
  rank["auth"] = 1; rank["config"] = 1
  rule = "api → transport (listener, channels, demo beside it) → app → http → auth, config → herald_core"
  failures = 0
}

FNR == 1 {
  file = FILENAME
  rel = substr(file, length(src) + 1)
  n = split(rel, parts, "/")
  in_block = 0; in_group = 0
  if (rel == "lib.rs") { mod = ""; depth = 0 }
  else {
    mod = parts[1]; sub(/\.rs$/, "", mod)
    # The module depth of the file: a/b.rs and a/b/mod.rs are both a::b.
    depth = n
    if (parts[n] == "mod.rs") depth = n - 1
    if (!(mod in rank)) {
      printf "%s: module %s has no layer: add it to scripts/check-layers.sh and docs/architecture.md\n", file, mod
      failures++
    }
  }
}

# The top-level module `name` used from the current file at line `line`, by path `path`.
function check(name, path) {
  if (mod == "" || name == mod || name == "self" || name == "") return
  if (!(name in rank)) {
    printf "%s:%d imports %s — %s may not import the crate root (lib.rs is the top: %s)\n", file, FNR, path, mod, rule
    failures++
    return
  }
  if (!(mod in rank)) return
  if (rank[name] >= rank[mod]) {
    printf "%s:%d imports %s — %s may not import %s (%s)\n", file, FNR, path, mod, name, rule
    failures++
  }
}

{
  line = $0
  # Block comments, possibly over several lines.
  out = ""
  while (line != "") {
    if (in_block) {
      i = index(line, "*/")
      if (i == 0) { line = ""; break }
      line = substr(line, i + 2); in_block = 0
    } else {
      i = index(line, "/*")
      if (i == 0) { out = out line; line = ""; break }
      out = out substr(line, 1, i - 1); line = substr(line, i + 2); in_block = 1
    }
  }
  line = out
  # String literals, then line comments (doc comments included).
  gsub(/"([^"\\]|\\.)*"/, "\"\"", line)
  i = index(line, "//"); if (i > 0) line = substr(line, 1, i - 1)

  rest = line
  while (rest != "") {
    if (in_group) {
      # Inside `crate::{ … }`: the first name of each entry at the top level of the braces.
      c = substr(rest, 1, 1)
      if (c == "{") { group_depth++; rest = substr(rest, 2); continue }
      if (c == "}") { group_depth--; rest = substr(rest, 2); if (group_depth == 0) in_group = 0; continue }
      if (c == "," && group_depth == 1) { expect = 1; rest = substr(rest, 2); continue }
      if (expect && group_depth == 1 && match(rest, /^[A-Za-z_][A-Za-z0-9_]*/)) {
        name = substr(rest, 1, RLENGTH); rest = substr(rest, RLENGTH + 1); expect = 0
        if (!group_super || name in rank) check(name, group_prefix name)
        continue
      }
      rest = substr(rest, 2)
      continue
    }
    if (!match(rest, /(^|[^A-Za-z0-9_$])(crate|super)::/)) break
    start = RSTART; if (substr(rest, start, 1) !~ /[cs]/) start++
    rest = substr(rest, start)
    if (substr(rest, 1, 7) == "crate::") {
      rest = substr(rest, 8); prefix = "crate::"; k = 0
    } else {
      # super::…: only a path that climbs to the crate root leaves its module.
      k = 0
      while (substr(rest, 1, 7) == "super::") { rest = substr(rest, 8); k++ }
      if (k < depth) { k = 0; continue }
      prefix = "crate::"
    }
    if (substr(rest, 1, 1) == "{") {
      in_group = 1; group_depth = 1; expect = 1; group_prefix = prefix; group_super = k > 0; k = 0
      rest = substr(rest, 2)
      continue
    }
    if (match(rest, /^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)?/)) {
      path = prefix substr(rest, 1, RLENGTH)
      name = substr(rest, 1, RLENGTH); sub(/::.*/, "", name)
      rest = substr(rest, RLENGTH + 1)
      # From a file at the top of its module, `super::x` is crate::x only when x is a module
      # (in its `mod tests`, `super::` is the file itself).
      if (k > 0 && !(name in rank)) { k = 0; continue }
      k = 0
      check(name, path)
    }
  }
}

END {
  if (failures > 0) {
    printf "check-layers: %d import(s) against the layers of the server (docs/architecture.md, \"Server\")\n", failures
    exit 1
  }
}
' || exit 1
echo "check-layers: $src keeps its layers ($(find "$src" -name '*.rs' | wc -l) files)"
