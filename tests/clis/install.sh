#!/usr/bin/env bash
# Install (or find) one pinned coding-agent CLI, or the OpenAI Node SDK, from npm, into a
# version-keyed cache outside the work tree, like tests/controlplane/build.sh does for the Go binaries.
#
#   tests/clis/install.sh claude|codex|gemini|openai-node
#
# The LAST line printed on stdout is the path of the CLI's executable (for openai-node, a
# library: the node_modules directory that holds it); everything else goes to stderr. Claude Code and Codex ship a native binary as a platform optional
# dependency of the npm package, gemini-cli one bundled script: only the npm registry is needed.
#
# Environment knobs:
#   MODELROUTE_CLI_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/clis)
set -euo pipefail

# The tested versions (README "Coding agents" names them; change both together).
CLAUDE_CODE_VERSION=2.1.332
CODEX_VERSION=0.171.0
GEMINI_CLI_VERSION=0.61.0
OPENAI_NODE_VERSION=7.59.0

log() { printf 'clis: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${1:-}" in
    claude) pkg=@anthropic-ai/claude-code; version=$CLAUDE_CODE_VERSION; bin=claude ;;
    codex) pkg=@openai/codex; version=$CODEX_VERSION; bin=codex ;;
    gemini) pkg=@google/gemini-cli; version=$GEMINI_CLI_VERSION; bin=gemini ;;
    openai-node) pkg=openai; version=$OPENAI_NODE_VERSION; bin="" ;;
    *) die "usage: $0 claude|codex|gemini|openai-node" ;;
esac

cache_root="${MODELROUTE_CLI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelroute/clis}"
dest="$cache_root/${pkg//\//+}@$version"
if [[ -n "$bin" ]]; then
    exe="$dest/node_modules/.bin/$bin"
else
    exe="$dest/node_modules"  # a library: what NODE_PATH (or an import by path) needs
fi

# A CLI works when `--version` does; a library when Node can load it at the pinned version.
works() {
    if [[ -n "$bin" ]]; then
        [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1
    else
        [[ -d "$1/$pkg" ]] && [[ "$(cd "$1/$pkg" && node -p 'require("./package.json").version' 2>/dev/null)" == "$version" ]]
    fi
}
partial_exe() { if [[ -n "$bin" ]]; then echo "$partial/node_modules/.bin/$bin"; else echo "$partial/node_modules"; fi; }

if works "$exe"; then
    echo "$exe"
    exit 0
fi
command -v npm >/dev/null || die "npm is not on PATH; it is needed to install $pkg@$version into $dest"
mkdir -p "$cache_root"

# Serialise concurrent installs (several pytest sessions at once): the second caller
# waits, then finds the finished cache.
exec 9>"$cache_root/.install.lock"
flock 9
if works "$exe"; then
    echo "$exe"
    exit 0
fi

partial="$dest.partial.$$"
rm -rf "$partial"
trap 'rm -rf "$partial"' EXIT
log "installing $pkg@$version into $dest"
npm install --prefix "$partial" --no-audit --no-fund --no-save --loglevel=error "$pkg@$version" >&2
# Claude Code's postinstall copies its platform binary over a placeholder; an npm that
# skipped install scripts leaves the placeholder, so run it here.
pkg_dir="$partial/node_modules/$pkg"
if ! works "$(partial_exe)" && [[ -f "$pkg_dir/install.cjs" ]]; then
    (cd "$pkg_dir" && node install.cjs) >&2
fi
works "$(partial_exe)" || die "$pkg@$version installed but does not load (\`${bin:-node} --version\` / package.json)"
rm -rf "$dest"
mv "$partial" "$dest"
trap - EXIT
echo "$exe"
