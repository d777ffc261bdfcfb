#!/usr/bin/env bash
# Debian packages that carry the general-English starter corpus (WordNet, GCIDE).
# Installs them when missing and this user can (root, or passwordless sudo);
# otherwise says how, and the corpus build will report the missing sources by name.
set -euo pipefail
have() { [ -e /usr/share/wordnet/data.noun ] && [ -e /usr/share/dictd/gcide.index ]; }
if have; then exit 0; fi
pkgs="wordnet-base dict-gcide"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: WordNet / GCIDE not found and apt-get is unavailable; the 'general' corpus needs other sources (see experts/README.md)" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else
  echo "note: install the general-English corpus with: sudo apt-get install $pkgs" >&2
  exit 0
fi
echo "installing Debian packages: $pkgs"
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $pkgs >/dev/null
have || { echo "error: $pkgs installed but their files are not where expected" >&2; exit 1; }
